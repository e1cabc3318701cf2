"""TransformerLens's ``HookedTransformer`` state dict (TransformerLens 1.x-3.x), saved with
``torch.save(model.state_dict(), ...)`` or as ``.safetensors``.

Attention weights are per head: ``W_Q/W_K/W_V`` [H, D, Dh] and ``W_O`` [H, Dh, D], biases
``b_Q/b_K/b_V`` [H, Dh]; the MLP and the unembedding multiply from the right (``W_in`` [D, 4D],
``W_U`` [D, V]); ``unembed.b_U`` is the head's bias. ``from_pretrained`` processes the weights by
default: ``fold_ln`` removes the layer norms' scale and shift (``LNPre``), ``center_unembed``
shifts each position's logits by a constant. Folded norms are read as scale 1 and shift 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import GPT2_VARIANT
from ..errors import CheckpointError, ConfigError
from ..io.arrays import Arrays
from ..io.readers import read_json
from ..io.writers import placeholders, save_torch
from ..text.vocabulary import Vocabulary
from .base import (
    Candidate,
    ConfigKey,
    ConfigTable,
    Format,
    Raw,
    holding,
    later,
    safetensors_later,
    torch_loaded,
)
from .table import MappingTable

FILENAME = "model.pth"
SENTINEL = "embed.W_E"
TABLE = MappingTable.parse("tlens", """
    token_embedding_table.weight        embed.W_E
    position_embedding_table.weight     pos_embed.W_pos
    attention_norm.scale                blocks.{}.ln1.w
    attention_norm.shift                blocks.{}.ln1.b
    attention.query_projection.weight   blocks.{}.attn.W_Q          heads in
    attention.query_projection.bias     blocks.{}.attn.b_Q          heads
    attention.key_projection.weight     blocks.{}.attn.W_K          heads in
    attention.key_projection.bias       blocks.{}.attn.b_K          heads
    attention.value_projection.weight   blocks.{}.attn.W_V          heads in
    attention.value_projection.bias     blocks.{}.attn.b_V          heads
    attention.output_projection.weight  blocks.{}.attn.W_O          heads out
    attention.output_projection.bias    blocks.{}.attn.b_O
    feed_forward_norm.scale             blocks.{}.ln2.w
    feed_forward_norm.shift             blocks.{}.ln2.b
    feed_forward.expansion.weight       blocks.{}.mlp.W_in          transpose
    feed_forward.expansion.bias         blocks.{}.mlp.b_in
    feed_forward.contraction.weight     blocks.{}.mlp.W_out         transpose
    feed_forward.contraction.bias       blocks.{}.mlp.b_out
    layer_norm.scale                    ln_final.w
    layer_norm.shift                    ln_final.b
    output_head.weight                  unembed.W_U                 transpose
    output_head.bias                    unembed.b_U
    """,  # W_U is written always; tied again on reading when it is W_E transposed
    ignored=("blocks.{}.attn.mask", "blocks.{}.attn.IGNORE"),  # causal mask and -inf buffers
)
CONFIG_TABLE = ConfigTable((
    ConfigKey("n_layers", "number_of_layers"),
    ConfigKey("d_model", "embedding_dimension"),
    ConfigKey("n_ctx", "context_length"),
    ConfigKey("n_heads", "number_of_heads"),
    ConfigKey("d_vocab", "vocab_size"),
    ConfigKey("eps", "layer_norm_epsilon", 1e-5),
    ConfigKey("act_fn", "gelu_approximation", "gelu_new",
              values={"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"},
              values_are="a GELU GPT-2 uses"),
), assumes={**GPT2_VARIANT, "dropout_rate": 0.0, "qkv_bias": True, "bias": True},
   derived={"output_size": "`d_vocab_out`, the columns of `unembed.W_U`",
            "output_bias": "a non-zero `unembed.b_U`"})
# HookedTransformerConfig values an export states so that TransformerLens builds GPT-2's blocks
FIXED = {"normalization_type": "LN", "positional_embedding_type": "standard",
         "original_architecture": "GPT2LMHeadModel", "attn_only": False,
         "tokenizer_name": "gpt2", "default_prepend_bos": True}
NORMS = ("ln1", "ln2")
HINT = ("put the HookedTransformerConfig beside it as config.json "
        "(n_layers, d_model, n_ctx, n_heads, d_vocab, act_fn)")


def read_config(folder: Path, tensors: dict[str, torch.Tensor], origin: str
                ) -> tuple[dict, str]:
    """The TransformerLens config beside the weights (``config.json`` with ``d_model``), else
    the one the shapes give (``W_Q`` [H, D, Dh] holds the head count).

    Raises:
        ConfigError: for a config of another architecture (RMS norms, rotary positions...).
    """
    path = folder / "config.json"
    found = read_json(path) if path.is_file() else None
    if isinstance(found, dict) and "d_model" in found:
        problems = [f"{key} is {found[key]!r}, not {wanted!r}" for key, wanted in (
            ("positional_embedding_type", "standard"), ("attn_only", False))
            if key in found and found[key] != wanted]
        if found.get("normalization_type", "LN") not in ("LN", "LNPre", None):
            problems.append(f"normalization_type is {found['normalization_type']!r}, not LN")
        if found.get("d_mlp") not in (None, 4 * found["d_model"]):
            problems.append(f"d_mlp={found['d_mlp']!r} is not 4 x d_model")
        if problems:
            raise ConfigError(f"{path}: " + "; ".join(problems),
                              hint="gpt2port loads the GPT-2 architecture only")
        return found, str(path)
    try:
        rows, width = tensors["embed.W_E"].shape
        heads = tensors["blocks.0.attn.W_Q"].shape[0]
        context = tensors["pos_embed.W_pos"].shape[0]
    except (KeyError, ValueError):
        raise CheckpointError(f"{origin}: embed.W_E, pos_embed.W_pos or blocks.0.attn.W_Q is "
                              "missing or not of TransformerLens's shape", hint=HINT) from None
    return {"n_layers": TABLE.block_count(tensors), "d_model": width, "n_ctx": context,
            "n_heads": heads, "d_vocab": rows}, origin


def unfolded(tensors: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Folded layer norms (``fold_ln``: no ``ln1``/``ln2``/``ln_final`` tensors) as scale 1 and
    shift 0, and a zero ``b_U`` dropped: the same function under GPT-2's layout."""
    width = tensors["embed.W_E"].shape[1]
    dtype = tensors["embed.W_E"].dtype
    tensors = dict(tensors)
    norms = [f"blocks.{i}.{norm}" for i in range(layers) for norm in NORMS] + ["ln_final"]
    for norm in norms:
        if f"{norm}.w" not in tensors and f"{norm}.b" not in tensors:
            tensors[f"{norm}.w"] = torch.ones(width, dtype=dtype)
            tensors[f"{norm}.b"] = torch.zeros(width, dtype=dtype)
    bias = tensors.get("unembed.b_U")
    if bias is not None and bias.is_floating_point() and not bool(bias.any()):
        del tensors["unembed.b_U"]
    return tensors


class TransformerLens(Format):
    name = "tlens"
    name_table = TABLE
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "TransformerLens `HookedTransformer` state dict"
    summary = ("`model.pth` (or `.safetensors`): `embed.W_E`, `blocks.N.attn.W_Q` [H, D, Dh]..., "
               "processed (`fold_ln`, `center_unembed`) or not; `config.json` with the "
               "HookedTransformerConfig")
    head = "separate"
    vocabulary = "rows"
    holds_output_bias = True  # unembed.b_U
    cannot_represent = ("dropout (TransformerLens has none: 0 assumed); no biases (zeros: "
                        "exact); a padded vocabulary; a classifier head")
    proof = ("a state dict written from TransformerLens's documented layout (its GPT-2 weight "
             "conversion), processed with fold_ln and center_unembed, loads with the "
             "log-probabilities of the unprocessed model; the export has exactly "
             "`HookedTransformer`'s keys and shapes for `strict=True`")

    def weights_file(self, candidate: Candidate) -> Candidate | None:
        """The path itself, or in a folder a ``.pth`` or ``.safetensors`` with ``embed.W_E``."""
        return holding(candidate, SENTINEL, ("*.pth", "*.safetensors"))

    def recognises(self, candidate: Candidate) -> bool:
        return self.weights_file(candidate) is not None

    def read_raw(self, candidate: Candidate) -> Raw:
        weights = self.weights_file(candidate)
        origin = str(weights.path)
        tensors = weights.state_dict()
        config, config_origin = read_config(weights.path.parent, tensors, origin)
        layers = config.get("n_layers") if type(config.get("n_layers")) is int else 0
        return Raw(origin, unfolded(tensors, min(layers, TABLE.block_count(tensors))), config,
                   config_origin=config_origin)

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``model.pth`` with ``HookedTransformer``'s buffers and a ``b_U`` (zeros for a head
        without one), and ``config.json`` with the HookedTransformerConfig (unprocessed:
        ``normalization_type`` LN)."""
        held = placeholders(tensors)
        context, rows = config["context_length"], config["padded_vocab_size"]
        state = {**held}
        state.setdefault("unembed.b_U", torch.zeros(config["output_size"], dtype=tensors.dtype))
        mask = torch.tril(torch.ones(context, context, dtype=torch.bool))
        for index in range(config["number_of_layers"]):
            state[f"blocks.{index}.attn.mask"] = mask
            state[f"blocks.{index}.attn.IGNORE"] = torch.tensor(-torch.inf)
        save_torch(destination / FILENAME, state, tensors, held)
        width = config["embedding_dimension"]
        theirs = {**CONFIG_TABLE.from_model({**config, "vocab_size": rows}),
                  "d_head": width // config["number_of_heads"], "d_mlp": 4 * width,
                  "d_vocab_out": config["output_size"], **FIXED}
        (destination / "config.json").write_text(json.dumps(theirs, indent=2))

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """TransformerLens's names and per-head layout back to GPT-2's Conv1D tensors, by
        NumPy reshapes written out here (as TransformerLens's own GPT-2 conversion lays them
        out, in reverse); each tensor read (``torch.load`` or the safetensors library) when the
        reference needs it."""
        weights = self.weights_file(Candidate(path))
        if weights.is_pickle:
            state = torch_loaded(weights.path)
            makers = {name: later(tensor) for name, tensor in state.items()
                      if tensor.is_floating_point() and not name.endswith(".IGNORE")}
            shapes = {name: tuple(state[name].shape) for name in makers}
        else:
            makers, shapes = safetensors_later(weights.path)
            state = {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}
        arrays = Arrays(makers)
        values, origin = read_config(weights.path.parent, state, str(weights.path))
        config = CONFIG_TABLE.to_model(values, origin=origin, extra={
            "tie_output_head": False, "output_bias": "unembed.b_U" in arrays,
            "output_size": shapes["unembed.W_U"][1]})
        width = config["embedding_dimension"]

        def get(name: str, default: float | None = None):
            return lambda: arrays[name] if name in arrays else np.full(width, default, np.float32)

        def attention_in(block: str):  # [H, D, Dh] x 3 -> [D, 3D]
            return lambda: np.concatenate([arrays[f"{block}.attn.W_{p}"].transpose(1, 0, 2)
                                           .reshape(width, width) for p in "QKV"], axis=1)

        def attention_bias(block: str):
            return lambda: np.concatenate([arrays[f"{block}.attn.b_{p}"].reshape(width)
                                           for p in "QKV"])

        def attention_out(block: str):  # [H, Dh, D] -> [D, D]
            return lambda: arrays[f"{block}.attn.W_O"].reshape(width, width)

        ours = {"wte.weight": get("embed.W_E"), "wpe.weight": get("pos_embed.W_pos"),
                "ln_f.weight": get("ln_final.w", 1.0), "ln_f.bias": get("ln_final.b", 0.0),
                "lm_head.weight": lambda: arrays["unembed.W_U"].T}
        if "unembed.b_U" in arrays:
            ours["lm_head.bias"] = get("unembed.b_U")
        for i in range(config["number_of_layers"]):
            block, h = f"blocks.{i}", f"h.{i}"
            ours[f"{h}.attn.c_attn.weight"] = attention_in(block)
            ours[f"{h}.attn.c_attn.bias"] = attention_bias(block)
            ours[f"{h}.attn.c_proj.weight"] = attention_out(block)
            ours[f"{h}.attn.c_proj.bias"] = get(f"{block}.attn.b_O")
            for norm, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
                ours[f"{h}.{theirs}.weight"] = get(f"{block}.{norm}.w", 1.0)
                ours[f"{h}.{theirs}.bias"] = get(f"{block}.{norm}.b", 0.0)
            for part in ("in", "out"):
                name = "c_fc" if part == "in" else "c_proj"
                ours[f"{h}.mlp.{name}.weight"] = get(f"{block}.mlp.W_{part}")
                ours[f"{h}.mlp.{name}.bias"] = get(f"{block}.mlp.b_{part}")
        return Arrays(ours), config
