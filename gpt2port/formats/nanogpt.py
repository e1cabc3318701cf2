"""nanoGPT's ``ckpt.pt``, as its ``train.py`` writes it and its ``sample.py`` reads it.

``{"model": state_dict, "model_args": {n_layer, n_head, n_embd, block_size, bias, vocab_size,
dropout}, "optimizer", "iter_num", "best_val_loss", "config"}``. Weights are ``nn.Linear``
[out, in]; ``c_attn`` packs q|k|v; ``lm_head`` is tied to ``wte``; ``bias=False`` drops every
Linear and LayerNorm bias; the MLP computes the exact (erf) GELU. A model compiled with
``torch.compile`` saves its names under ``_orig_mod.``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import GPT2_VARIANT
from ..errors import CheckpointError
from ..io.arrays import Arrays
from ..io.readers import read_json
from ..io.writers import placeholders, save_torch
from ..text.vocabulary import Vocabulary
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw, later, torch_loaded
from .table import MappingTable

FILENAME = "ckpt.pt"
GPT2_VOCABULARY, PADDED_VOCABULARY = 50257, 50304  # train.py's default: 50257 rounded up
TABLE = MappingTable.parse("nanogpt", """
    token_embedding_table.weight        transformer.wte.weight
    position_embedding_table.weight     transformer.wpe.weight
    attention_norm.scale                transformer.h.{}.ln_1.weight
    attention_norm.shift                transformer.h.{}.ln_1.bias
    attention.qkv.weight                transformer.h.{}.attn.c_attn.weight   split
    attention.qkv.bias                  transformer.h.{}.attn.c_attn.bias     split
    attention.output_projection.weight  transformer.h.{}.attn.c_proj.weight
    attention.output_projection.bias    transformer.h.{}.attn.c_proj.bias
    feed_forward_norm.scale             transformer.h.{}.ln_2.weight
    feed_forward_norm.shift             transformer.h.{}.ln_2.bias
    feed_forward.expansion.weight       transformer.h.{}.mlp.c_fc.weight
    feed_forward.expansion.bias         transformer.h.{}.mlp.c_fc.bias
    feed_forward.contraction.weight     transformer.h.{}.mlp.c_proj.weight
    feed_forward.contraction.bias       transformer.h.{}.mlp.c_proj.bias
    layer_norm.scale                    transformer.ln_f.weight
    layer_norm.shift                    transformer.ln_f.bias
    output_head.weight                  lm_head.weight
    """,  # lm_head is the same tensor as wte: tied
    ignored=("transformer.h.{}.attn.bias",),  # the causal mask, saved when flash is absent
    optional_prefixes=("_orig_mod.",),  # torch.compile's wrapper
)
# model_args key <-> model config key (all required: train.py always writes them)
CONFIG_TABLE = ConfigTable((
    ConfigKey("n_layer", "number_of_layers"),
    ConfigKey("n_head", "number_of_heads"),
    ConfigKey("n_embd", "embedding_dimension"),
    ConfigKey("block_size", "context_length"),
    ConfigKey("bias", "bias"),
    ConfigKey("vocab_size", "padded_vocab_size"),
    ConfigKey("dropout", "dropout_rate"),
), assumes={**GPT2_VARIANT, "layer_norm_epsilon": 1e-5, "gelu_approximation": "none"})
HINT = "nanoGPT's train.py writes " + ", ".join(key.theirs for key in CONFIG_TABLE.keys)


def implied_config(model_args: object) -> dict:
    """What nanoGPT's ``model_args`` imply beyond their keys: a vocabulary of 50304 is GPT-2's
    50257 padded, and ``bias`` covers the query, key and value projections too."""
    if not isinstance(model_args, dict):
        return {}
    rows = model_args.get("vocab_size")
    implied = {"vocab_size": GPT2_VOCABULARY if rows == PADDED_VOCABULARY else rows}
    return {**implied, "qkv_bias": model_args.get("bias")}


class NanoGPT(Format):
    name = "nanogpt"
    name_table = TABLE
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "nanoGPT's `ckpt.pt`"
    summary = "`ckpt.pt` holding `model` and `model_args` (a bare state dict needs a config.json)"
    head = "tied"
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

    def read_raw(self, candidate: Candidate) -> Raw:
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
        return Raw(origin, state, args, extra=implied_config(args))

    def config_beside(self, path: Path) -> dict:
        config_path = path.parent / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{path}: a bare nanoGPT state dict, and no config.json "
                                  "beside it", hint="put nanoGPT's model_args in config.json: "
                                  + ", ".join(key.theirs for key in CONFIG_TABLE.keys))
        return read_json(config_path)

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``ckpt.pt`` with ``model`` (``lm_head.weight`` sharing ``wte``'s storage, as
        nanoGPT saves it) and ``model_args``, for ``sample.py --init_from=resume``."""
        held = placeholders(tensors)
        state = {**held, "lm_head.weight": held["transformer.wte.weight"]}
        save_torch(destination / FILENAME, {
            "model": state, "model_args": CONFIG_TABLE.from_model(config), "iter_num": 0,
            "best_val_loss": float("inf")}, tensors, held)

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """nanoGPT's names are GPT-2's with ``transformer.``; Linear [out, in] transposed."""
        found = self.checkpoint_file(Candidate(path)).path
        saved = torch_loaded(found)
        state = saved["model"] if "model_args" in saved else saved
        args = saved["model_args"] if "model_args" in saved else self.config_beside(found)
        arrays = {}
        for name, tensor in state.items():
            name = name.removeprefix("_orig_mod.").removeprefix("transformer.")
            if re.fullmatch(r"h\.\d+\.attn\.bias", name):  # the causal mask, not c_attn.bias
                continue
            linear = name.startswith("h.") and tensor.dim() == 2  # [out, in] -> [in, out]
            arrays[name] = later(tensor.t() if linear else tensor)
        config = CONFIG_TABLE.to_model(args, origin=str(found), hint=HINT,
                                       extra={**implied_config(args), "tie_output_head": True})
        return Arrays(arrays), config
