"""Hugging Face's GPT-2 layout (``GPT2LMHeadModel``): its tensor names, transforms and config keys.

Conv1D layers store weights as [in, out], the transpose of ``nn.Linear``; ``c_attn`` packs the
query, key and value projections side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from ..config import validate_config
from ..errors import ConfigError
from ..model import GPTModel
from .table import Chain, MappingTable, Split, Transpose, from_model, rule

# Weights files of a Hugging Face folder, in order of preference.
WEIGHTS_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
BLOCK = "transformer_blocks.{}"
CONV1D = Transpose()
PACKED_QKV_WEIGHT = Chain(Transpose(), Split(3, dim=0))
PACKED_QKV_BIAS = Split(3, dim=0)
QKV = tuple(f"{BLOCK}.attention.{part}_projection" for part in ("query", "key", "value"))

TABLE = MappingTable(
    format="huggingface",
    rules=(
        rule("wte.weight", "token_embedding_table.weight"),
        rule("wpe.weight", "position_embedding_table.weight"),
        rule("h.{}.ln_1.weight", f"{BLOCK}.attention_norm.scale"),
        rule("h.{}.ln_1.bias", f"{BLOCK}.attention_norm.shift"),
        rule("h.{}.attn.c_attn.weight", tuple(f"{p}.weight" for p in QKV), PACKED_QKV_WEIGHT),
        rule("h.{}.attn.c_attn.bias", tuple(f"{p}.bias" for p in QKV), PACKED_QKV_BIAS),
        rule("h.{}.attn.c_proj.weight", f"{BLOCK}.attention.output_projection.weight", CONV1D),
        rule("h.{}.attn.c_proj.bias", f"{BLOCK}.attention.output_projection.bias"),
        rule("h.{}.ln_2.weight", f"{BLOCK}.feed_forward_norm.scale"),
        rule("h.{}.ln_2.bias", f"{BLOCK}.feed_forward_norm.shift"),
        rule("h.{}.mlp.c_fc.weight", f"{BLOCK}.feed_forward.expansion.weight", CONV1D),
        rule("h.{}.mlp.c_fc.bias", f"{BLOCK}.feed_forward.expansion.bias"),
        rule("h.{}.mlp.c_proj.weight", f"{BLOCK}.feed_forward.contraction.weight", CONV1D),
        rule("h.{}.mlp.c_proj.bias", f"{BLOCK}.feed_forward.contraction.bias"),
        rule("ln_f.weight", "layer_norm.scale"),
        rule("ln_f.bias", "layer_norm.shift"),
        rule("lm_head.weight", "output_head.weight"),  # absent when tied to wte
    ),
    # Causal-mask buffers older transformers saved with the weights; they hold no weights.
    ignored=("h.{}.attn.bias", "h.{}.attn.masked_bias"),
    # GPT2LMHeadModel.save_pretrained writes the body under "transformer."; the Hub file does not.
    optional_prefixes=("transformer.",),
)

# config.json key <-> model config key, with the default GPT2Config assumes when a key is absent.
CONFIG_KEYS = (
    ("vocab_size", "vocab_size", 50257),
    ("n_positions", "context_length", 1024),
    ("n_embd", "embedding_dimension", 768),
    ("n_head", "number_of_heads", 12),
    ("n_layer", "number_of_layers", 12),
    ("resid_pdrop", "dropout_rate", 0.1),
    ("layer_norm_epsilon", "layer_norm_epsilon", 1e-5),
    ("tie_word_embeddings", "tie_output_head", True),
)
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")  # names transformers uses for the tanh GELU
# Options GPT2Config has that this model does not implement, with the value it needs.
UNSUPPORTED_OPTIONS = (
    ("scale_attn_by_inverse_layer_idx", False),
    ("add_cross_attention", False),
    ("scale_attn_weights", True),
)


def config_to_model(hf_config: dict, *, origin: str) -> dict:
    """A ``config.json`` dict -> the model config.

    Raises:
        ConfigError: for a non-GPT-2 model or an option this model does not implement.
    """
    problems = []
    if hf_config.get("model_type", "gpt2") != "gpt2":
        problems.append(f"model_type is {hf_config['model_type']!r}, not 'gpt2'")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        problems.append(f"activation_function {activation!r} is not the tanh GELU GPT-2 uses")
    problems += [f"{key}={hf_config[key]!r} is not supported (needs {needed!r})"
                 for key, needed in UNSUPPORTED_OPTIONS
                 if key in hf_config and hf_config[key] != needed]
    width = hf_config.get("n_embd", 768)
    if hf_config.get("n_inner") not in (None, 4 * width if isinstance(width, int) else None):
        problems.append(f"n_inner={hf_config['n_inner']!r} is not 4 x n_embd")
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems),
                          hint="gpt2port loads the GPT-2 architecture only")
    config = {ours: hf_config.get(theirs, default) for theirs, ours, default in CONFIG_KEYS}
    epsilon = config["layer_norm_epsilon"]
    if isinstance(epsilon, int) and not isinstance(epsilon, bool):
        config["layer_norm_epsilon"] = float(epsilon)  # an integer in JSON, e.g. 1
    try:
        return validate_config({**config, "qkv_bias": True})
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error.message}",
                          hint="config.json's sizes must be positive integers") from None


def config_from_model(config: dict) -> dict:
    """The model config -> a ``config.json`` that ``GPT2LMHeadModel`` loads."""
    hf_config = {theirs: config[ours] for theirs, ours, _ in CONFIG_KEYS}
    dropout = config["dropout_rate"]
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        **hf_config,
        "n_ctx": config["context_length"],
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
    }


def save(model: GPTModel, folder: Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` in the Hub's layout (no prefix; a tied
    head is left out, as on the Hub) for ``GPT2LMHeadModel.from_pretrained``."""
    state = model.state_dict()
    if model.config["tie_output_head"]:
        state = {name: t for name, t in state.items() if name != "output_head.weight"}
    tensors = from_model(TABLE, state, model.config["number_of_layers"])
    folder = Path(folder)
    (folder / "config.json").write_text(json.dumps(config_from_model(model.config), indent=2))
    path = folder / "model.safetensors"
    save_file({name: t.contiguous() for name, t in tensors.items()}, path,
              metadata={"format": "pt"})
    return path
