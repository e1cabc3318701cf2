"""``compare`` and ``assert_equivalent``: exports are identical to their source in f32, a dtype
change is measured, a one-tensor change is found and named, over texts longer than the context."""

import json
import subprocess
import sys
import warnings

import pytest
from checkpoints import write_layout
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt2port import compare
from gpt2port.conversion import convert
from gpt2port.formats import FORMATS
from gpt2port.testing import assert_equivalent


def quietly(source, destination, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(source, destination, approximate_gelu=True, **options)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_layout("hub", tmp_path_factory.mktemp("compare") / "hub")


# every format that holds GPT-2's tanh GELU (nanoGPT's files assume the exact one: a change)
TANH_FORMATS = [f.name for f in FORMATS if f.assumes.get("gelu_approximation", "tanh") == "tanh"]


@pytest.mark.parametrize("to", TANH_FORMATS)
def test_every_f32_export_is_identical_to_its_source(to, source, tmp_path):
    found = compare(source, quietly(source, tmp_path / to, to=to))
    assert found.verdict == "identical", found.report()
    assert found.logits.max_abs == 0 and found.logits.windows > 1  # 64-token windows


@pytest.mark.parametrize(("dtype", "max_kl"), [("f16", 1e-4), ("bf16", 2e-3), ("q8_0", 2e-2)])
def test_a_dtype_change_is_measured(dtype, max_kl, source, tmp_path):
    pytest.importorskip("gguf")
    found = compare(source, quietly(source, tmp_path / "model.gguf", to="gguf", dtype=dtype))
    assert found.verdict == "different" and found.different_tensors
    assert 0 < found.logits.max_kl <= max_kl, found.report()
    assert_equivalent(source, tmp_path / "model.gguf", max_kl=max_kl)


def test_one_scaled_tensor_is_found_and_named_alone(source, tmp_path):
    copy = quietly(source, tmp_path / "copy", to="native")
    tensors = load_file(copy / "model.safetensors")
    tensors["transformer_blocks.1.feed_forward.expansion.weight"] *= 1.001
    with safe_open(copy / "model.safetensors", "pt") as file:
        metadata = file.metadata()
    save_file(tensors, copy / "model.safetensors", metadata=metadata)
    found = compare(source, copy)
    assert found.verdict == "different"
    assert [d.name for d in found.different_tensors] == [
        "transformer_blocks.1.feed_forward.expansion.weight"]
    assert found.different_tensors[0].theirs == ("h.1.mlp.c_fc.weight",
                                                 "transformer_blocks.1.feed_forward.expansion.weight")
    with pytest.raises(AssertionError, match=r"h\.1\.mlp\.c_fc\.weight"):
        assert_equivalent(source, copy)
    run = subprocess.run([sys.executable, "-m", "gpt2port", "compare", str(source), str(copy)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 6 and run.stdout.strip().endswith("different"), run.stderr
    as_json = subprocess.run([sys.executable, "-m", "gpt2port", "compare", str(source), str(copy),
                              "--json"], capture_output=True, text=True, check=False)
    assert json.loads(as_json.stdout)["verdict"] == "different"


def test_a_head_of_its_own_is_named(source, tmp_path):
    untied = write_layout("untied_head", tmp_path / "untied")
    found = compare(source, untied)
    assert "output_head.weight" in found.only_in_b and found.verdict == "different"


def test_assert_equivalent_passes_for_an_export_and_verify_text_passes(source, tmp_path):
    exported = quietly(source, tmp_path / "hf", to="hf")
    assert assert_equivalent(source, exported).verdict == "identical"
    (tmp_path / "text.txt").write_text("The dog was found in a field. " * 40)
    run = subprocess.run([sys.executable, "-m", "gpt2port", "verify", str(exported), "--text",
                          str(tmp_path / "text.txt"), "--reference", "numpy"],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "window(s)" in run.stdout, run.stdout + run.stderr


def test_a_bug_planted_in_the_loaders_gguf_reader_is_caught_by_verify(source, tmp_path,
                                                                       monkeypatch):
    """The reference reads GGUF from its specification, not through the gguf package."""
    pytest.importorskip("gguf")
    from gpt2port import load_pretrained
    from gpt2port.formats import gguf
    from gpt2port.proof.verification import verify_model

    exported = quietly(source, tmp_path / "model.gguf", to="gguf")
    assert verify_model(load_pretrained(exported), exported).passed
    real = gguf._tensors

    def planted(*args):  # a reader that transposes a square weight (a layout bug)
        tensors = real(*args)
        tensors["blk.1.attn_output.weight"] = tensors["blk.1.attn_output.weight"].T.copy()
        return tensors

    monkeypatch.setattr(gguf, "_tensors", planted)
    assert not verify_model(load_pretrained(exported), exported).passed


def test_a_bug_planted_in_the_loaders_tensor_bundle_reader_is_caught_by_verify(
        source, tmp_path, monkeypatch):
    """The reference reads OpenAI's checkpoint with TensorFlow, not the loader's reader."""
    pytest.importorskip("tensorflow", reason="TensorFlow is the OpenAI reference (a test extra)")
    from gpt2port import load_pretrained
    from gpt2port.formats import openai
    from gpt2port.proof.verification import verify_model

    exported = quietly(source, tmp_path / "openai", to="openai")
    real = openai.read_bundle

    def planted(prefix):  # a reader that scales one weight by 1.01
        tensors = dict(real(prefix))
        tensors["model/h1/mlp/c_fc/w"] = tensors["model/h1/mlp/c_fc/w"] * 1.01
        return tensors

    monkeypatch.setattr(openai, "read_bundle", planted)
    result = verify_model(load_pretrained(exported), exported)
    assert "TensorFlow" in result.reference and not result.passed
