"""``--to onnx`` (issue 31): the export runs in onnxruntime as optimum and transformers.js run it
(the prompt with an empty past, then one token at a time) with transformers' greedy ids on the
source, from a Hub-layout checkpoint and from a nanoGPT ``ckpt.pt``; it reads back; what it
cannot hold is refused."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import transformers
from checkpoints import reference_model, write_hub_layout, write_layout
from onnx_runs import (
    HAS_OPTIMUM,
    HAS_TRANSFORMERS_JS,
    OPTIMUM_PYTHON,
    TRANSFORMERS_JS,
    greedy_with_past,
    optimum_greedy,
    transformers_js_text,
)
from other_projects import write_nanogpt_checkpoint

from gpt2port import CheckpointError, ConfigError, compare, convert, load_pretrained, verify
from gpt2port.io import onnx_file

PROMPT, NEW = [5, 77, 300, 12, 499], 16


def random_model(**config):
    model = reference_model(**config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def transformers_greedy(model) -> list[int]:
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW,
                              do_sample=False, pad_token_id=0)[0].tolist()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A Hub-layout folder (with GPT-2's tokenizer cut to its vocabulary) and a nanoGPT
    ``ckpt.pt`` (the exact GELU, no Hugging Face folder anywhere), each with the transformers
    model that computes it."""
    root = tmp_path_factory.mktemp("onnx-sources")
    hub_model = random_model()
    hub = write_hub_layout(hub_model, root / "hub")
    nano_model = random_model(activation_function="gelu")
    nano = write_nanogpt_checkpoint(nano_model, root / "nano")
    return {"hub": (hub, hub_model), "nanogpt": (nano, nano_model)}


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx-exports")
    found = {}
    for name, (source, _) in sources.items():
        for dtype in ("f32", "f16"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # nanoGPT's dropout, the tokenizer's notes
                found[name, dtype] = convert(source, root / f"{name}-{dtype}", to="onnx",
                                             dtype=dtype)
    return found


@pytest.mark.parametrize("source", ["hub", "nanogpt"])
def test_the_f32_export_generates_transformers_greedy_ids_with_past(sources, exports, source):
    _, model = sources[source]
    folder = exports[source, "f32"]
    assert (folder / "onnx" / "model.onnx").is_file()
    ids, _ = greedy_with_past(folder, PROMPT, NEW)
    assert ids == transformers_greedy(model)


@pytest.mark.parametrize("source", ["hub", "nanogpt"])
def test_the_f16_export_stays_within_half_precision(sources, exports, source):
    _, model = sources[source]
    folder = exports[source, "f16"]
    assert (folder / "onnx" / "model_fp16.onnx").is_file()
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"] == {
        "dtype": "fp16"}
    expected = transformers_greedy(model)
    _, steps = greedy_with_past(folder, expected[:-1], 1)  # the source's own continuation
    with torch.no_grad():
        full = model(torch.tensor([expected[:-1]])).logits[0, -1].numpy()
    # fp16 keeps about 3 significant digits: the logits agree to 1% of their range
    assert np.abs(steps[0] - full).max() <= 1e-2 * np.abs(full).max()


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_verify_runs_the_export_in_onnxruntime(exports, dtype):
    result = verify(exports["hub", dtype])
    assert result.passed, result.report()
    assert "onnxruntime" in result.reference
    assert verify(exports["hub", dtype], reference="numpy").passed


def test_an_export_reads_back_bit_for_bit(sources, exports, tmp_path):
    source, _ = sources["hub"]
    assert compare(source, exports["hub", "f32"]).verdict == "identical"
    convert(exports["hub", "f32"], tmp_path / "back", to="hf")
    assert compare(source, tmp_path / "back").verdict == "identical"


def test_transformers_reads_the_export_s_tokenizer_and_config(sources, exports):
    folder, text = exports["hub", "f32"], "The dog was found in a field"
    expected = transformers.AutoTokenizer.from_pretrained(sources["hub"][0])(text).input_ids
    assert transformers.AutoTokenizer.from_pretrained(folder)(text).input_ids == expected
    assert (folder / "tokenizer.json").is_file()  # transformers.js reads nothing else
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.model_type == "gpt2" and config.use_cache


def test_past_2_gib_the_weights_go_to_external_data(sources, tmp_path, monkeypatch):
    """The limit lowered to a tiny model's size: the same path gpt2-xl takes."""
    monkeypatch.setattr(onnx_file, "PROTOBUF_LIMIT", 2**20 + 1000)
    source, model = sources["hub"]
    folder = convert(source, tmp_path / "external", to="onnx")
    assert (folder / "onnx" / "model.onnx_data").stat().st_size > 10 * (
        folder / "onnx" / "model.onnx").stat().st_size
    assert json.loads((folder / "config.json").read_text())["transformers.js_config"][
        "use_external_data_format"] == {"model.onnx": 1}
    assert greedy_with_past(folder, PROMPT, NEW)[0] == transformers_greedy(model)
    assert compare(source, folder).verdict == "identical"


def test_what_onnx_cannot_hold_is_refused(tmp_path):
    classifier = transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
        n_embd=64, n_layer=1, n_head=4, vocab_size=512, n_positions=32, num_labels=3,
        pad_token_id=0))
    classifier.save_pretrained(tmp_path / "classifier")
    with pytest.raises(ConfigError, match="onnx holds only a language-model head"):
        convert(tmp_path / "classifier", tmp_path / "out", to="onnx")
    with pytest.raises(ConfigError, match="onnx does not store bf16"):
        convert(tmp_path / "classifier", tmp_path / "out", to="onnx", dtype="bf16")
    assert not (tmp_path / "out").exists()


def test_an_onnx_model_gpt2port_did_not_write_is_refused_by_name(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    folder = write_layout("hub", tmp_path / "hub")
    (folder / "onnx").mkdir()
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, producer_name="pytorch"), folder / "onnx" / "model.onnx")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="written by pytorch, not gpt2port"):
        load_pretrained(folder)


def test_without_the_onnx_package_the_export_says_what_to_install(sources, tmp_path):
    source, _ = sources["hub"]
    code = ("import sys; sys.modules['onnx'] = None\n"
            "from gpt2port.cli import main\n"
            f"sys.exit(main(['convert', {str(source)!r}, {str(tmp_path / 'out')!r}, "
            "'--to', 'onnx']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 3, done.stderr
    assert "needs the onnx package" in done.stderr and "gpt2port[onnx]" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_OPTIMUM,
                    reason=f"optimum needs transformers < 4.58, so it lives in its own venv: "
                    f"{OPTIMUM_PYTHON} with optimum (scripts/install_references.sh) is missing")
@pytest.mark.parametrize("source", ["hub", "nanogpt"])
def test_optimum_generates_transformers_greedy_ids(sources, exports, source):
    _, model = sources[source]
    assert optimum_greedy(exports[source, "f32"], PROMPT, NEW) == transformers_greedy(model)


@pytest.mark.skipif(not HAS_TRANSFORMERS_JS,
                    reason=f"Node or transformers.js in {TRANSFORMERS_JS} is missing (made by "
                    "scripts/install_references.sh; it needs Node and npm)")
def test_transformers_js_generates_what_transformers_generates(sources, exports):
    source, model = sources["hub"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    ids = tokenizer("The dog", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                  do_sample=False, pad_token_id=0)[0]
    assert transformers_js_text(exports["hub", "f32"], "The dog", "fp32") == tokenizer.decode(
        expected)
