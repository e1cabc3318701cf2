"""Hugging Face's GPT-2 layout (``GPT2LMHeadModel``): its tensor names, transforms and config keys.

Conv1D layers store weights as [in, out], the transpose of ``nn.Linear``; ``c_attn`` packs the
query, key and value projections side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors.torch import save_file

from ..config import validate_config
from ..errors import CheckpointError, ConfigError
from ..readers import read_json, read_weights_file
from ..tokenizer import END_OF_TEXT_ID
from .base import Candidate, Checkpoint, ConfigKey, Format, state_for_writing
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
    ConfigKey("vocab_size", "vocab_size", 50257),
    ConfigKey("n_positions", "context_length", 1024),
    ConfigKey("n_embd", "embedding_dimension", 768),
    ConfigKey("n_head", "number_of_heads", 12),
    ConfigKey("n_layer", "number_of_layers", 12),
    ConfigKey("resid_pdrop", "dropout_rate", 0.1),
    ConfigKey("layer_norm_epsilon", "layer_norm_epsilon", 1e-5),
    ConfigKey("tie_word_embeddings", "tie_output_head", True),
    ConfigKey("activation_function", "gelu_approximation", "gelu_new"),
)
# activation_function values -> the model's gelu_approximation; the first of each is written
ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
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
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        problems.append(f"activation_function {activation!r} is not a GELU GPT-2 uses "
                        f"({', '.join(ACTIVATIONS)})")
    problems += [f"{key}={hf_config[key]!r} is not supported (needs {needed!r})"
                 for key, needed in UNSUPPORTED_OPTIONS
                 if key in hf_config and hf_config[key] != needed]
    width = hf_config.get("n_embd", 768)
    if hf_config.get("n_inner") not in (None, 4 * width if isinstance(width, int) else None):
        problems.append(f"n_inner={hf_config['n_inner']!r} is not 4 x n_embd")
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems),
                          hint="gpt2port loads the GPT-2 architecture only")
    config = {key.ours: hf_config.get(key.theirs, key.default) for key in CONFIG_KEYS}
    config["gelu_approximation"] = ACTIVATIONS[activation]
    epsilon = config["layer_norm_epsilon"]
    if isinstance(epsilon, int) and not isinstance(epsilon, bool):
        config["layer_norm_epsilon"] = float(epsilon)  # an integer in JSON, e.g. 1
    try:
        return validate_config({**config, "qkv_bias": True},
                               names={key.ours: key.theirs for key in CONFIG_KEYS})
    except ConfigError as error:
        raise ConfigError(f"{origin}: {error.message}", hint=error.hint) from None


def config_from_model(config: dict) -> dict:
    """The model config -> a ``config.json`` that ``GPT2LMHeadModel`` loads."""
    hf_config = {key.theirs: config[key.ours] for key in CONFIG_KEYS}
    hf_config["vocab_size"] = config["padded_vocab_size"]
    hf_config["activation_function"] = next(
        name for name, ours in ACTIVATIONS.items() if ours == config["gelu_approximation"])
    dropout = config["dropout_rate"]
    end_of_text = END_OF_TEXT_ID if config["vocab_size"] > END_OF_TEXT_ID else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        **hf_config,
        "n_ctx": config["context_length"],
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
    }


def find_weights(folder: Path) -> Path | None:
    """The weights file a Hugging Face folder holds, in order of preference."""
    return next((folder / name for name in WEIGHTS_FILES if (folder / name).is_file()), None)


class HuggingFace(Format):
    name = "hf"
    name_table = TABLE
    title = "Hugging Face (`GPT2LMHeadModel`)"
    summary = ("`config.json` + `model.safetensors` (also sharded, or `pytorch_model.bin`), "
               "Conv1D `[in, out]` weights")
    config_keys = CONFIG_KEYS
    assumes: ClassVar[dict] = {"bias": True, "qkv_bias": True}
    vocabulary = "rows"
    cannot_represent = ("a model without biases (written as zero biases: exact); a padded "
                        "vocabulary (its padding rows become ordinary ids)")
    proof = "transformers' `GPT2LMHeadModel.from_pretrained` reads the export: logits bit-equal"
    read_by_transformers = True

    def recognises(self, candidate: Candidate) -> bool:
        path = candidate.path
        if path.is_dir():
            return find_weights(path) is not None
        return path.name.endswith(".index.json") or path.suffix in (
            ".safetensors", ".bin", ".pt", ".pth")

    def read(self, candidate: Candidate) -> Checkpoint:
        path = candidate.path
        weights = find_weights(path) if path.is_dir() else path
        if weights.suffix != ".json" and not (candidate.is_safetensors or candidate.is_pickle
                                              or path.is_dir()):
            first = candidate.magic[:4]
            raise CheckpointError(
                f"{path}: neither a PyTorch pickle, a safetensors file nor llm.c's model file "
                f"(it starts with bytes {first.hex(' ') or 'nothing'})",
                hint="point at a checkpoint of one of the formats in docs/formats.md")
        config_path = weights.parent / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{weights}: no config.json beside it",
                                  hint="put the model's config.json in the same folder")
        config = config_to_model(read_json(config_path), origin=str(config_path))
        tensors = TABLE.strip_prefix(read_weights_file(weights))
        return Checkpoint(str(weights), tensors, config, TABLE, self)

    def write(self, model, folder: Path, *, dtype: str | None, tokenizer: Path | None) -> None:
        """``config.json``, ``generation_config.json`` and ``model.safetensors`` in the Hub's
        layout (no prefix; a tied head left out, as on the Hub) for
        ``GPT2LMHeadModel.from_pretrained``."""
        state = state_for_writing(model, dtype)
        tensors = from_model(TABLE, state, model.config["number_of_layers"])
        folder = Path(folder)
        hf_config = config_from_model(model.config)
        (folder / "config.json").write_text(json.dumps(hf_config, indent=2))
        # what GPT2LMHeadModel.save_pretrained writes beside it: generate() stops at <|endoftext|>
        (folder / "generation_config.json").write_text(json.dumps(
            {key: hf_config[key] for key in ("bos_token_id", "eos_token_id")}, indent=2))
        save_file({name: t.contiguous() for name, t in tensors.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        from safetensors.torch import load_file  # the safetensors library, not our reader

        weights = find_weights(path) if path.is_dir() else path
        files = [weights]
        if weights.name.endswith(".index.json"):
            weight_map = json.loads(weights.read_text())["weight_map"]
            files = [weights.parent / shard for shard in sorted(set(weight_map.values()))]
        arrays = {}
        for file in files:
            tensors = load_file(file) if file.suffix == ".safetensors" else torch.load(
                file, map_location="cpu", weights_only=True)
            for name, tensor in tensors.items():
                arrays[name.removeprefix("transformer.")] = tensor.float().numpy()
        config_path = weights.parent / "config.json"
        return arrays, config_to_model(read_json(config_path), origin=str(config_path))
