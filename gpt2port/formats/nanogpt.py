"""nanoGPT's ``ckpt.pt``, as its ``train.py`` writes it and its ``sample.py`` reads it.

``{"model": state_dict, "model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size,
dropout}, "optimizer", "iter_num", "best_val_loss", "config"}``. Weights are ``nn.Linear``
[out, in]; ``c_attn`` packs q|k|v; ``lm_head`` is tied to ``wte``; ``bias=False`` drops every
Linear and LayerNorm bias; the MLP computes the exact (erf) GELU. A model compiled with
``torch.compile`` saves its names under ``_orig_mod.``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..config import validate_config
from ..errors import CheckpointError, ConfigError
from ..readers import read_json
from .base import Candidate, Checkpoint, ConfigKey, Format, state_for_writing
from .huggingface import BLOCK, QKV
from .table import MappingTable, Split, from_model, rule

FILENAME = "ckpt.pt"
GPT2_VOCABULARY, PADDED_VOCABULARY = 50257, 50304  # train.py's default: 50257 rounded up
TABLE = MappingTable(
    format="nanogpt",
    rules=(
        rule("transformer.wte.weight", "token_embedding_table.weight"),
        rule("transformer.wpe.weight", "position_embedding_table.weight"),
        rule("transformer.h.{}.ln_1.weight", f"{BLOCK}.attention_norm.scale"),
        rule("transformer.h.{}.ln_1.bias", f"{BLOCK}.attention_norm.shift"),
        rule("transformer.h.{}.attn.c_attn.weight", tuple(f"{p}.weight" for p in QKV), Split(3)),
        rule("transformer.h.{}.attn.c_attn.bias", tuple(f"{p}.bias" for p in QKV), Split(3)),
        rule("transformer.h.{}.attn.c_proj.weight", f"{BLOCK}.attention.output_projection.weight"),
        rule("transformer.h.{}.attn.c_proj.bias", f"{BLOCK}.attention.output_projection.bias"),
        rule("transformer.h.{}.ln_2.weight", f"{BLOCK}.feed_forward_norm.scale"),
        rule("transformer.h.{}.ln_2.bias", f"{BLOCK}.feed_forward_norm.shift"),
        rule("transformer.h.{}.mlp.c_fc.weight", f"{BLOCK}.feed_forward.expansion.weight"),
        rule("transformer.h.{}.mlp.c_fc.bias", f"{BLOCK}.feed_forward.expansion.bias"),
        rule("transformer.h.{}.mlp.c_proj.weight", f"{BLOCK}.feed_forward.contraction.weight"),
        rule("transformer.h.{}.mlp.c_proj.bias", f"{BLOCK}.feed_forward.contraction.bias"),
        rule("transformer.ln_f.weight", "layer_norm.scale"),
        rule("transformer.ln_f.bias", "layer_norm.shift"),
        rule("lm_head.weight", "output_head.weight"),  # the same tensor as wte: tied
    ),
    ignored=("transformer.h.{}.attn.bias",),  # the causal mask, saved when flash is absent
    optional_prefixes=("_orig_mod.",),  # torch.compile's wrapper
)
# model_args key <-> model config key (all required: train.py always writes them)
CONFIG_KEYS = (
    ConfigKey("n_layer", "number_of_layers"),
    ConfigKey("n_head", "number_of_heads"),
    ConfigKey("n_embd", "embedding_dimension"),
    ConfigKey("block_size", "context_length"),
    ConfigKey("bias", "bias"),
    ConfigKey("vocab_size", "padded_vocab_size"),
    ConfigKey("dropout", "dropout_rate"),
)


def config_from_model_args(model_args: object, *, origin: str) -> dict:
    """``model_args`` -> the model config. A vocabulary of 50304 is GPT-2's 50257 padded.

    Raises:
        ConfigError: naming what is missing or wrong.
    """
    if not isinstance(model_args, dict):
        raise ConfigError(f"{origin}: model_args is not a dict")
    missing = [key.theirs for key in CONFIG_KEYS if key.theirs not in model_args]
    if missing:
        raise ConfigError(f"{origin}: model_args lacks {', '.join(missing)}",
                          hint="nanoGPT's train.py writes " +
                          ", ".join(key.theirs for key in CONFIG_KEYS))
    config = {key.ours: model_args[key.theirs] for key in CONFIG_KEYS}
    rows = config["padded_vocab_size"]
    config["vocab_size"] = GPT2_VOCABULARY if rows == PADDED_VOCABULARY else rows
    if isinstance(config["dropout_rate"], int) and not isinstance(config["dropout_rate"], bool):
        config["dropout_rate"] = float(config["dropout_rate"])
    try:
        return validate_config({**config, **NanoGPT.assumes, "qkv_bias": config["bias"],
                                "tie_output_head": True})
    except ConfigError as error:
        raise ConfigError(f"{origin}: model_args: {error.message}") from None


def model_args(config: dict) -> dict:
    """The model config -> nanoGPT's ``GPTConfig`` keyword arguments."""
    return {key.theirs: config[key.ours] for key in CONFIG_KEYS}


class NanoGPT(Format):
    name = "nanogpt"
    name_table = TABLE
    title = "nanoGPT's `ckpt.pt`"
    summary = "`ckpt.pt` holding `model` and `model_args` (a bare state dict needs a config.json)"
    head = "tied"
    config_keys = CONFIG_KEYS
    assumes: ClassVar[dict] = {"layer_norm_epsilon": 1e-5, "gelu_approximation": "none"}
    cannot_represent = ("an untied head, an epsilon other than 1e-5 (refused); GPT-2's tanh "
                        "GELU (nanoGPT computes the exact one: the export states the logit "
                        "change); qkv biases without the others (zeros: exact)")
    proof = ("`ckpt.pt` files written from nanoGPT's documented layout load with logits within "
             "1e-5 of transformers' (`activation_function: gelu`, zero biases for "
             "`bias=False`); the export's `model` has exactly the keys of nanoGPT's "
             "`GPT.state_dict()`")

    def held_config(self, config: dict) -> dict:
        held = super().held_config(config)
        held["bias"] = held["qkv_bias"] = config["bias"] or config["qkv_bias"]
        return held

    def checkpoint_file(self, candidate: Candidate) -> Candidate | None:
        """The path itself, or ``ckpt.pt`` in a folder, when it holds nanoGPT's checkpoint
        (``model`` + ``model_args``) or a bare state dict in nanoGPT's names."""
        if candidate.path.is_dir():
            candidate = candidate.inside(FILENAME)
        if not (candidate.path.is_file() and candidate.is_pickle):
            return None
        found = candidate.pickled
        if isinstance(found, dict) and {"model", "model_args"} <= set(found):
            return candidate
        state = TABLE.strip_prefix(candidate.state_dict() or {})
        if {"transformer.wte.weight", "lm_head.weight"} <= set(state):
            packed = state.get("transformer.h.0.attn.c_attn.weight")
            linear = packed is not None and packed.dim() == 2 and (
                packed.shape[0] == 3 * packed.shape[1])  # Hugging Face's Conv1D is [D, 3D]
            return candidate if linear else None
        return None

    def recognises(self, candidate: Candidate) -> bool:
        return self.checkpoint_file(candidate) is not None

    def read(self, candidate: Candidate) -> Checkpoint:
        found = self.checkpoint_file(candidate)
        origin = str(found.path)
        saved = found.pickled
        if "model_args" in saved:
            state, args = saved["model"], saved["model_args"]
            if not isinstance(state, dict) or not all(
                    isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{origin}: 'model' is not a dict of name -> tensor")
        else:
            state, args = saved, self.config_beside(found.path)
        config = config_from_model_args(args, origin=origin)
        return Checkpoint(origin, TABLE.strip_prefix(state), config, TABLE, self)

    def config_beside(self, path: Path) -> dict:
        config_path = path.parent / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{path}: a bare nanoGPT state dict, and no config.json "
                                  "beside it", hint="put nanoGPT's model_args in config.json: "
                                  + ", ".join(key.theirs for key in CONFIG_KEYS))
        return read_json(config_path)

    def write(self, model, folder: Path, *, dtype: str | None, tokenizer: Path | None) -> None:
        """``ckpt.pt`` with ``model`` (``lm_head.weight`` sharing ``wte``'s storage, as
        nanoGPT saves it) and ``model_args``, for ``sample.py --init_from=resume``."""
        state = state_for_writing(model, dtype)
        tensors = from_model(TABLE, state, model.config["number_of_layers"])
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
        torch.save({"model": tensors, "model_args": model_args(model.config), "iter_num": 0,
                    "best_val_loss": float("inf")}, Path(folder) / FILENAME)

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        """nanoGPT's names are GPT-2's with ``transformer.``; Linear [out, in] transposed."""
        found = self.checkpoint_file(Candidate(path)).path
        saved = torch.load(found, map_location="cpu", weights_only=True)
        state = saved["model"] if "model_args" in saved else saved
        args = saved["model_args"] if "model_args" in saved else self.config_beside(found)
        arrays = {}
        for name, tensor in state.items():
            name = name.removeprefix("_orig_mod.").removeprefix("transformer.")
            if name.endswith("attn.bias"):
                continue
            array = tensor.float().numpy()
            arrays[name] = array.T if name.startswith("h.") and array.ndim == 2 else array
        return arrays, config_from_model_args(args, origin=str(found))
