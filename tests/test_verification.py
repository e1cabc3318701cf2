"""The verification itself: its NumPy reference against transformers, and that it can fail."""

import pytest
import torch
from checkpoints import LAYOUTS, load_reference, write_gpt2_tokenizer, write_layout
from huggingface_hub import try_to_load_from_cache

from gpt2port import generate, load_pretrained
from gpt2port.config import PRESETS
from gpt2port.formats import BY_NAME
from gpt2port.proof.figures import prompt_for
from gpt2port.proof.reference import reference_logits
from gpt2port.proof.verification import verify_model

GPT2 = PRESETS["gpt2"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_numpy_reference_agrees_with_transformers(layout, tmp_path):
    folder = write_layout(layout, tmp_path / layout)
    ids = list(range(1, 30))
    with torch.no_grad():
        expected = load_reference(folder)(torch.tensor([ids])).logits[0].numpy()
    assert abs(reference_logits(folder, ids) - expected).max() <= 1e-5


@pytest.mark.parametrize("reference", ["transformers", "numpy"])
def test_a_faithful_load_passes(tiny_hub_folder, reference):
    model = load_pretrained(tiny_hub_folder)
    result = verify_model(model, tiny_hub_folder, reference=reference)
    assert result.passed and result.max_abs_diff <= 1e-5, result.report()


def test_a_wrong_weight_fails(tiny_hub_folder):
    model = load_pretrained(tiny_hub_folder)
    with torch.no_grad():  # a query/key mix-up, as a wrong split would make
        attention = model.transformer_blocks[0].attention
        attention.query_projection.weight, attention.key_projection.weight = (
            attention.key_projection.weight, attention.query_projection.weight)
    result = verify_model(model, tiny_hub_folder, reference="numpy")
    assert not result.passed and "NOT OK" in result.report() and "FAILED" in result.report()


def test_a_wrong_known_answer_fails(tiny_hub_folder):
    model = load_pretrained(tiny_hub_folder)
    prompt = prompt_for(model.config)[:2]
    right = generate(model, torch.tensor([prompt]), 5)[0].tolist()
    assert verify_model(model, tiny_hub_folder, known_greedy=(prompt, right)).passed
    wrong = right[:-1] + [(right[-1] + 1) % model.config["vocab_size"]]
    result = verify_model(model, tiny_hub_folder, known_greedy=(prompt, wrong))
    assert not result.passed and "known greedy answer (7 tokens): NOT OK" in result.report()


REAL_WEIGHTS = try_to_load_from_cache(GPT2.repo_id, "model.safetensors", revision=GPT2.revision)


@pytest.mark.skipif(not isinstance(REAL_WEIGHTS, str),
                    reason="the real openai-community/gpt2 weights are not in the Hugging Face "
                    "cache (this machine has no route to the Hub); run `gpt2port download gpt2`")
def test_real_gpt2_gives_the_known_greedy_answer():
    model = load_pretrained("gpt2")
    prompt, answer = GPT2.known_greedy
    assert generate(model, torch.tensor([prompt]), len(answer) - len(prompt))[0].tolist() == list(
        answer)


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    """A tiny checkpoint exported to every format, and nanoGPT's and llm.c's own files."""
    from checkpoints import reference_model
    from other_projects import write_llmc_model, write_nanogpt_checkpoint

    from gpt2port.conversion import convert
    from gpt2port.formats import BY_NAME

    root = tmp_path_factory.mktemp("every-format")
    hub = write_layout("hub", root / "hub")
    with pytest.warns():  # nanoGPT's exact GELU and llm.c's dropout are stated
        exports = {name: convert(hub, root / name, to=name) for name in BY_NAME}
    exports["hf file"] = hub / "model.safetensors"
    exports["book file"] = exports["book"] / "model.pth"
    exports["nanogpt ckpt.pt, no biases"] = write_nanogpt_checkpoint(
        reference_model(activation_function="gelu"), root / "nano", bias=False)
    # a fine-tune from init_from='gpt2': biases (trained: not zero as at init; c_attn.bias is
    # not the causal mask)
    fine_tune = reference_model(activation_function="gelu")
    with torch.no_grad():
        for name, parameter in fine_tune.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    exports["nanogpt ckpt.pt, biases"] = write_nanogpt_checkpoint(
        fine_tune, root / "nano-biases", bias=True)
    exports["llm.c bf16"] = write_llmc_model(reference_model(vocab_size=500),
                                             root / "gpt2_124M_bf16.bin",
                                             padded_vocab_size=512, bf16=True)
    return exports


@pytest.mark.parametrize("which", [*BY_NAME, "hf file", "book file", "nanogpt ckpt.pt, no biases",
                                   "nanogpt ckpt.pt, biases", "llm.c bf16"])
def test_verify_passes_on_every_format(which, every_format):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gpt2port", "verify", str(every_format[which])],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "PASSED" in done.stdout, done.stdout + done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def from_nanogpt_with_biases(every_format, tmp_path_factory):
    """nanoGPT's fine-tune with biases converted to every format (the GELU approximated where a
    format knows only the tanh one)."""
    from gpt2port.conversion import convert
    from gpt2port.formats import BY_NAME

    root = tmp_path_factory.mktemp("from-nanogpt")
    source = every_format["nanogpt ckpt.pt, biases"]
    tokenizer = root / "tokenizer"  # ckpt.pt holds none, and a GGUF needs one
    tokenizer.mkdir()
    write_gpt2_tokenizer(tokenizer, load_pretrained(source).config["vocab_size"])
    with pytest.warns():
        return {name: convert(source, root / name, to=name, approximate_gelu=True,
                              tokenizer=tokenizer) for name in BY_NAME}


@pytest.mark.parametrize("to", list(BY_NAME))
def test_a_nanogpt_fine_tune_with_biases_converts_to_every_format_and_verifies(
        to, from_nanogpt_with_biases, every_format):
    export = from_nanogpt_with_biases[to]
    model = load_pretrained(export)
    assert verify_model(model, export, reference="numpy").passed
    if "gelu_approximation" not in BY_NAME[to].assumes or BY_NAME[to].assumes[
            "gelu_approximation"] == "none":  # they hold the exact GELU: the same model
        source = load_pretrained(every_format["nanogpt ckpt.pt, biases"])
        ids = torch.tensor([prompt_for(source.config)])
        with torch.no_grad():
            assert torch.allclose(model(ids), source(ids), atol=1e-5)


@pytest.mark.parametrize("which", list(BY_NAME))
def test_the_numpy_reference_catches_a_wrong_mapping_in_every_format(which, every_format):
    """A query/key swap in the loaded model is caught: the reference does not use the table."""
    model = load_pretrained(every_format[which], dtype="float32")
    with torch.no_grad():
        attention = model.transformer_blocks[1].attention
        attention.query_projection.weight, attention.key_projection.weight = (
            attention.key_projection.weight, attention.query_projection.weight)
    assert not verify_model(model, every_format[which], reference="numpy").passed
