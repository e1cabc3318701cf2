"""The Hub's GPT-2 variants (issue 29, item 1): a feed-forward width other than 4x, every
activation transformers' GPT-2 computes, attention unscaled or scaled by layer. Each loads and
computes what transformers' own GPT2LMHeadModel computes, verifies against both references, goes
back to a Hugging Face folder unchanged, and is refused by name where a format cannot hold it."""

import warnings

import pytest
import torch
from checkpoints import load_reference, reference_model, write_hub_layout

from gpt2port import ConfigError, convert, generate, load_pretrained, validate_config, verify
from gpt2port.conversion import ConversionWarning
from gpt2port.formats import BY_NAME, FORMATS
from gpt2port.formats.huggingface import ACTIVATION_FUNCTIONS

VARIANTS = {
    "n_inner 3x": {"n_inner": 192},
    "n_inner odd": {"n_inner": 100},
    **{f"activation {name}": {"activation_function": name} for name in ACTIVATION_FUNCTIONS},
    "unscaled attention": {"scale_attn_weights": False},
    "attention by layer": {"scale_attn_by_inverse_layer_idx": True},
    "both scales off and on": {"scale_attn_weights": False,
                               "scale_attn_by_inverse_layer_idx": True, "n_inner": 96},
}
IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(9))


def variant(name: str, seed: int = 4):
    """transformers' model of the variant, every tensor random (norm gains and shifts too)."""
    model = reference_model(seed, **VARIANTS[name])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return {name: write_hub_layout(variant(name), root / name.replace(" ", "-"))
            for name in VARIANTS}


@pytest.mark.parametrize("name", VARIANTS)
def test_the_variant_computes_what_transformers_computes(name, folders):
    ours, theirs = load_pretrained(folders[name]), load_reference(folders[name])
    with torch.no_grad():
        difference = (ours(IDS) - theirs(IDS).logits).abs().max().item()
    assert difference < 1e-4, difference
    assert verify(folders[name], reference="numpy").passed
    prompt = IDS[:1, :5]
    expected = theirs.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, 12), expected)


@pytest.mark.parametrize("name", ["n_inner odd", "activation quick_gelu", "attention by layer"])
def test_transformers_reference_agrees(name, folders):
    result = verify(folders[name], reference="transformers")
    assert result.passed and "GPT2LMHeadModel" in result.reference, result.report()


@pytest.mark.parametrize("name", VARIANTS)
def test_the_variant_goes_back_to_hf_unchanged(name, folders, tmp_path):
    exported = convert(folders[name], tmp_path / "hf", to="hf")
    theirs, back = load_reference(folders[name]), load_reference(exported)
    for key in ("n_inner", "scale_attn_weights", "scale_attn_by_inverse_layer_idx"):
        assert getattr(back.config, key) == getattr(theirs.config, key), key
    # one spelling per function is written (gelu_pytorch_tanh as gelu_new, swish as silu)
    spelled, source = back.config.activation_function, theirs.config.activation_function
    assert ACTIVATION_FUNCTIONS[spelled] == ACTIVATION_FUNCTIONS[source]
    with torch.no_grad():
        back_logits, their_logits = back(IDS).logits, theirs(IDS).logits
    if spelled == source:
        assert torch.equal(back_logits, their_logits)
    else:  # transformers' two spellings of one function differ in the last bits
        assert (back_logits - their_logits).abs().max() < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_the_onnx_graph_computes_the_variant(name, folders, tmp_path):
    """Every width, activation and attention scale is built into the graph: onnxruntime runs
    it with transformers' logits."""
    exported = convert(folders[name], tmp_path / "onnx", to="onnx")
    result = verify(exported)
    assert result.passed and "onnxruntime" in result.reference, result.report()
    from onnx_runs import greedy_with_past

    prompt = IDS[0, :5].tolist()
    expected = load_reference(folders[name]).generate(IDS[:1, :5], max_new_tokens=8,
                                                      do_sample=False, pad_token_id=0)
    assert greedy_with_past(exported, prompt, 8)[0] == expected[0].tolist()


@pytest.mark.parametrize("to", [f.name for f in FORMATS
                                if f.name not in ("hf", "native", "onnx")])
@pytest.mark.parametrize("name, key", [("n_inner 3x", "feed-forward width 192"),
                                       ("activation relu", "relu activation"),
                                       ("unscaled attention", "unscaled attention scores"),
                                       ("attention by layer", "divided by (layer index + 1)")])
def test_formats_that_cannot_hold_it_refuse_by_name(to, name, key, folders, tmp_path):
    if to == "gguf" and name == "n_inner 3x":  # GGUF holds the width (feed_forward_length)
        exported = convert(folders[name], tmp_path / "model.gguf", to="gguf")
        assert verify(exported, reference="numpy").passed
        with torch.no_grad():
            assert torch.equal(load_pretrained(exported)(IDS),
                               load_pretrained(folders[name])(IDS))
        return
    if to == "gguf" and "attention" in name:  # folded into the query projections, stated
        with pytest.warns(ConversionWarning, match="folded into its query weights") as said:
            exported = convert(folders[name], tmp_path / "model.gguf", to="gguf")
        assert "largest logit change" in str(said[0].message)
        with torch.no_grad():
            difference = (load_pretrained(exported)(IDS) - load_reference(
                folders[name])(IDS).logits).abs().max().item()
        assert difference < 1e-4, difference
        assert load_pretrained(exported).config["attention_scaled_by_layer"] is False
        return
    with pytest.raises(ConfigError) as refused, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        convert(folders[name], tmp_path / "out", to=to)
    assert key in refused.value.message and f"cannot convert to {to}" in refused.value.message
    assert "hf" in refused.value.hint and "native" in refused.value.hint
    assert not (tmp_path / "out").exists()


def test_native_holds_every_variant(folders, tmp_path):
    exported = convert(folders["both scales off and on"], tmp_path / "native", to="native")
    assert load_pretrained(exported).config == load_pretrained(
        folders["both scales off and on"]).config


def test_the_compiled_step_runs_another_width_and_refuses_what_it_cannot(folders):
    model = load_pretrained(folders["n_inner odd"])
    prompt = IDS[:1, :4]
    assert torch.equal(generate(model, prompt, 10, compile=True), generate(model, prompt, 10))
    with pytest.raises(ConfigError, match="feed-forward runs 'relu'"):
        generate(load_pretrained(folders["activation relu"]), prompt, 3, compile=True)
    with pytest.raises(ConfigError, match="scales attention by 1/sqrt"):
        generate(load_pretrained(folders["attention by layer"]), prompt, 3, compile=True)


def test_an_unknown_activation_is_refused_naming_what_is_known(tmp_path):
    from checkpoints import edit_config

    folder = write_hub_layout(variant("n_inner 3x"), tmp_path / "m")
    edit_config(folder, activation_function="gelu_10")
    with pytest.raises(ConfigError, match="activation_function 'gelu_10' is not a function "
                       "transformers' GPT-2 computes"):
        load_pretrained(folder)


def test_every_format_assumes_or_holds_every_variant_key():
    config = validate_config({"vocab_size": 10, "context_length": 4, "embedding_dimension": 8,
                              "number_of_heads": 2, "number_of_layers": 1, "dropout_rate": 0.0,
                              "qkv_bias": True})
    for each in BY_NAME.values():
        held = each.held_config(config)
        for key in ("feed_forward_width", "activation", "attention_scaled_by_head_width",
                    "attention_scaled_by_layer"):
            assert held[key] == config[key], (each.name, key)


@pytest.mark.parametrize("name", ["unscaled attention", "attention by layer", "n_inner odd"])
def test_llama_cpp_computes_the_gguf_of_a_variant_as_transformers_does(name, folders, tmp_path,
                                                                        capfd):
    """llama.cpp's own graph (through llama-cpp-python) on the export: the scales folded into
    the query projections, another feed-forward width read from the file."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (.ci/run builds it from source; "
        "this test says so when that build failed)")
    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = convert(folders[name], tmp_path / "model.gguf", to="gguf")
    capfd.readouterr()
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, n_threads=2, verbose=True)
    log = capfd.readouterr().err
    assert "gpt2" in log and not any(warning in log for warning in (
        "missing pre-tokenizer", "special_eos_id is not in", "control-looking", "DEGRADED"))
    prompt = IDS[0, :16].tolist()
    llm.eval(prompt)
    theirs = np.array(llm.scores[:len(prompt)])
    with torch.no_grad():
        expected = load_reference(folders[name])(IDS[:1, :16]).logits[0].numpy()
    # llama.cpp's GELU reads an fp16 table: agreement to ~1e-3, not to fp32 rounding
    assert np.abs(theirs - expected).max() < 5e-3 * max(1.0, np.abs(expected).max())
    assert (theirs.argmax(-1) == expected.argmax(-1)).all()
