"""TransformerLens's HookedTransformer state dicts in and out, written here from TransformerLens's
documented layout (its GPT-2 weight conversion and weight processing), against transformers.

TransformerLens 4 removed ``HookedTransformer`` and 3.x pins its own transformers, so the
package is not installed: the files are made from the layout, as for nanoGPT and llm.c.
"""

import json
import warnings

import pytest
import torch
from checkpoints import reference_model, write_hub_layout
from safetensors.torch import save_file

from gpt2port import ConfigError, load_pretrained
from gpt2port.conversion import convert
from gpt2port.proof.verification import verify_model

IDS = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(4))


def hooked_state(reference) -> dict[str, torch.Tensor]:
    """A HookedTransformer's state_dict for the reference's weights, unprocessed: W_Q/W_K/W_V
    [H, D, Dh], W_O [H, Dh, D], b_Q... [H, Dh], W_in/W_out and W_U multiplying from the right,
    b_U zeros, the mask and IGNORE buffers."""
    config, body = reference.config, reference.transformer
    heads, width = config.n_head, config.n_embd
    state = {"embed.W_E": body.wte.weight, "pos_embed.W_pos": body.wpe.weight}
    for i, block in enumerate(body.h):
        prefix = f"blocks.{i}"
        for part, weight in zip("QKV", block.attn.c_attn.weight.split(width, dim=1), strict=True):
            state[f"{prefix}.attn.W_{part}"] = weight.reshape(width, heads, -1).permute(1, 0, 2)
        for part, bias in zip("QKV", block.attn.c_attn.bias.split(width), strict=True):
            state[f"{prefix}.attn.b_{part}"] = bias.reshape(heads, -1)
        state[f"{prefix}.attn.W_O"] = block.attn.c_proj.weight.reshape(heads, -1, width)
        state[f"{prefix}.attn.b_O"] = block.attn.c_proj.bias
        state[f"{prefix}.attn.mask"] = torch.tril(torch.ones(config.n_positions,
                                                             config.n_positions)).bool()
        state[f"{prefix}.attn.IGNORE"] = torch.tensor(-torch.inf)
        for norm, theirs in (("ln1", block.ln_1), ("ln2", block.ln_2)):
            state[f"{prefix}.{norm}.w"], state[f"{prefix}.{norm}.b"] = theirs.weight, theirs.bias
        state[f"{prefix}.mlp.W_in"], state[f"{prefix}.mlp.b_in"] = (block.mlp.c_fc.weight,
                                                                    block.mlp.c_fc.bias)
        state[f"{prefix}.mlp.W_out"], state[f"{prefix}.mlp.b_out"] = (block.mlp.c_proj.weight,
                                                                      block.mlp.c_proj.bias)
    state["ln_final.w"], state["ln_final.b"] = body.ln_f.weight, body.ln_f.bias
    state["unembed.W_U"] = reference.lm_head.weight.T
    state["unembed.b_U"] = torch.zeros(config.vocab_size)
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def processed(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """What from_pretrained's default processing does: fold_ln (each norm's scale into the
    weights reading its output, its shift into their biases, the norm tensors gone) and
    center_unembed (W_U and b_U minus their mean over the vocabulary)."""
    state = dict(state)
    for i in range(layers):
        prefix = f"blocks.{i}"
        scale, shift = state.pop(f"{prefix}.ln1.w"), state.pop(f"{prefix}.ln1.b")
        for part in "QKV":
            weight = state[f"{prefix}.attn.W_{part}"]
            state[f"{prefix}.attn.b_{part}"] = state[f"{prefix}.attn.b_{part}"] + torch.einsum(
                "d,hdk->hk", shift, weight)
            state[f"{prefix}.attn.W_{part}"] = weight * scale[None, :, None]
        scale, shift = state.pop(f"{prefix}.ln2.w"), state.pop(f"{prefix}.ln2.b")
        state[f"{prefix}.mlp.b_in"] = state[f"{prefix}.mlp.b_in"] + shift @ state[
            f"{prefix}.mlp.W_in"]
        state[f"{prefix}.mlp.W_in"] = state[f"{prefix}.mlp.W_in"] * scale[:, None]
    scale, shift = state.pop("ln_final.w"), state.pop("ln_final.b")
    state["unembed.b_U"] = state["unembed.b_U"] + shift @ state["unembed.W_U"]
    state["unembed.W_U"] = state["unembed.W_U"] * scale[:, None]
    state["unembed.W_U"] = state["unembed.W_U"] - state["unembed.W_U"].mean(-1, keepdim=True)
    state["unembed.b_U"] = state["unembed.b_U"] - state["unembed.b_U"].mean()
    return state


def log_probabilities(model, ids=IDS):
    with torch.no_grad():
        out = model(ids)
    return torch.log_softmax(getattr(out, "logits", out).float(), -1)


@pytest.fixture
def reference():
    """A GPT-2 whose biases and norms are not their initial zeros and ones (fold_ln moves them)."""
    model = reference_model(seed=2)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


def test_an_unprocessed_state_dict_loads_with_transformers_logits(reference, tmp_path):
    torch.save(hooked_state(reference), tmp_path / "hooked.pth")
    model = load_pretrained(tmp_path / "hooked.pth")
    assert model.config["number_of_heads"] == 4 and model.config["tie_output_head"]
    with torch.no_grad():
        assert (model(IDS) - reference(IDS).logits).abs().max() <= 1e-5
    assert verify_model(model, tmp_path / "hooked.pth").passed


def test_a_processed_state_dict_gives_the_unprocessed_log_probabilities(reference, tmp_path):
    state = processed(hooked_state(reference), reference.config.n_layer)
    save_file(state, tmp_path / "processed.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "n_layers": 2, "d_model": 64, "n_ctx": 64, "n_heads": 4, "d_head": 16, "d_mlp": 256,
        "d_vocab": 512, "act_fn": "gelu_new", "normalization_type": "LNPre"}))
    model = load_pretrained(tmp_path / "processed.safetensors")
    assert model.config["output_bias"] and not model.config["tie_output_head"]
    # centring the unembedding moves each position's logits by a constant: compare log-probs
    assert (log_probabilities(model) - log_probabilities(reference)).abs().max() <= 1e-5
    assert verify_model(model, tmp_path / "processed.safetensors").passed
    with pytest.raises(ConfigError, match="no shift absorbs it"):
        convert(tmp_path / "processed.safetensors", tmp_path / "hf", to="hf")
    native = convert(tmp_path / "processed.safetensors", tmp_path / "native", to="native")
    assert (log_probabilities(load_pretrained(native)) - log_probabilities(model)).abs().max() == 0


def test_the_export_has_hookedtransformers_keys_and_shapes(reference, tmp_path):
    source = write_hub_layout(reference, tmp_path / "hub")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = convert(source, tmp_path / "tlens", to="tlens")
    theirs = torch.load(exported / "model.pth", weights_only=True)
    wanted = hooked_state(reference)
    assert {n: tuple(t.shape) for n, t in theirs.items()} == {
        n: tuple(t.shape) for n, t in wanted.items()}
    for name, tensor in wanted.items():
        assert torch.equal(theirs[name], tensor), name
    config = json.loads((exported / "config.json").read_text())
    assert config["normalization_type"] == "LN" and config["act_fn"] == "gelu_new"
    assert (config["d_model"], config["d_head"], config["n_heads"], config["d_mlp"],
            config["d_vocab"], config["n_ctx"], config["n_layers"]) == (64, 16, 4, 256, 512, 64,
                                                                        2)
    back = convert(exported, tmp_path / "hf", to="hf")
    assert (log_probabilities(load_pretrained(back)) - log_probabilities(reference)).abs().max(
        ) <= 1e-5
