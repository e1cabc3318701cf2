"""The state dict of the book's ``GPTModel`` (*Build a Large Language Model (From Scratch)*).

``torch.save(model.state_dict(), "model.pth")`` (ch. 5), also inside ``model_and_optimizer.pth``
as ``model_state_dict``, or as ``.safetensors``. Every Linear is ``nn.Linear`` [out, in]; the
query, key and value projections are separate; ``att.mask`` buffers hold the causal mask.

The faster training script (ch. 5, ``10_llm-training-speed``) saves another layout, read too:
one fused ``att.qkv`` (query | key | value rows), ``att.proj``, ``nn.LayerNorm``'s
``weight``/``bias`` for scale/shift, a vocabulary of 50,304 (GPT-2's 50,257 padded), bf16, and
from a ``torch.compile``d model every name under ``_orig_mod.``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..config import GPT2_HEADS, GPT2_VARIANT, is_classifier
from ..errors import CheckpointError, ConfigError
from ..io.arrays import Arrays
from ..io.readers import read_json
from ..io.writers import placeholders, save_torch
from ..text.vocabulary import Vocabulary
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw, holding, later, torch_loaded
from .huggingface import CONFIG_TABLE as HF_CONFIG_TABLE
from .huggingface import check_architecture
from .native import to_conv1d_names
from .table import MappingTable

FILENAME = "model.pth"
# model_and_optimizer.pth is {"model_state_dict": ..., "optimizer_state_dict": ...}
WRAPPER = "model_state_dict"
SENTINEL = "tok_emb.weight"
TABLE = MappingTable.parse("book", """
    token_embedding_table.weight        tok_emb.weight
    position_embedding_table.weight     pos_emb.weight
    attention.query_projection.weight   trf_blocks.{}.att.W_query.weight
    attention.query_projection.bias     trf_blocks.{}.att.W_query.bias
    attention.key_projection.weight     trf_blocks.{}.att.W_key.weight
    attention.key_projection.bias       trf_blocks.{}.att.W_key.bias
    attention.value_projection.weight   trf_blocks.{}.att.W_value.weight
    attention.value_projection.bias     trf_blocks.{}.att.W_value.bias
    attention.output_projection.weight  trf_blocks.{}.att.out_proj.weight
    attention.output_projection.bias    trf_blocks.{}.att.out_proj.bias
    feed_forward.expansion.weight       trf_blocks.{}.ff.layers.0.weight
    feed_forward.expansion.bias         trf_blocks.{}.ff.layers.0.bias
    feed_forward.contraction.weight     trf_blocks.{}.ff.layers.2.weight
    feed_forward.contraction.bias       trf_blocks.{}.ff.layers.2.bias
    attention_norm.scale                trf_blocks.{}.norm1.scale
    attention_norm.shift                trf_blocks.{}.norm1.shift
    feed_forward_norm.scale             trf_blocks.{}.norm2.scale
    feed_forward_norm.shift             trf_blocks.{}.norm2.shift
    layer_norm.scale                    final_norm.scale
    layer_norm.shift                    final_norm.shift
    output_head.weight                  out_head.weight
    output_head.bias                    out_head.bias
    """,  # out_head is written always; tied again on reading when it equals tok_emb
    ignored=("trf_blocks.{}.att.mask",),  # the causal mask, a buffer
)
# the faster training script's GPTModel (PyTorchMultiHeadAttention, nn.LayerNorm)
FAST_TABLE = MappingTable.parse("book", """
    token_embedding_table.weight        tok_emb.weight
    position_embedding_table.weight     pos_emb.weight
    attention.qkv.weight                trf_blocks.{}.att.qkv.weight       split
    attention.qkv.bias                  trf_blocks.{}.att.qkv.bias         split
    attention.output_projection.weight  trf_blocks.{}.att.proj.weight
    attention.output_projection.bias    trf_blocks.{}.att.proj.bias
    feed_forward.expansion.weight       trf_blocks.{}.ff.layers.0.weight
    feed_forward.expansion.bias         trf_blocks.{}.ff.layers.0.bias
    feed_forward.contraction.weight     trf_blocks.{}.ff.layers.2.weight
    feed_forward.contraction.bias       trf_blocks.{}.ff.layers.2.bias
    attention_norm.scale                trf_blocks.{}.norm1.weight
    attention_norm.shift                trf_blocks.{}.norm1.bias
    feed_forward_norm.scale             trf_blocks.{}.norm2.weight
    feed_forward_norm.shift             trf_blocks.{}.norm2.bias
    layer_norm.scale                    final_norm.weight
    layer_norm.shift                    final_norm.bias
    output_head.weight                  out_head.weight
    output_head.bias                    out_head.bias
    """)
FAST_TITLE = ("the faster training script's layout (ch. 5, `10_llm-training-speed`; under "
              "`_orig_mod.` when compiled), read only")
FAST_SENTINEL = "trf_blocks.0.att.qkv.weight"
COMPILED_PREFIX = "_orig_mod."  # torch.compile's wrapper, in the state dict of a compiled model
GPT2_VOCABULARY, PADDED_VOCABULARY = 50257, 50304  # the fast script pads GPT-2's to 50,304
CONFIG_TABLE = ConfigTable((
    ConfigKey("vocab_size", "vocab_size"),
    ConfigKey("context_length", "context_length"),
    ConfigKey("emb_dim", "embedding_dimension"),
    ConfigKey("n_heads", "number_of_heads"),
    ConfigKey("n_layers", "number_of_layers"),
    ConfigKey("drop_rate", "dropout_rate", 0.1),
    ConfigKey("qkv_bias", "qkv_bias", False),
), assumes={**GPT2_VARIANT, "layer_norm_epsilon": 1e-5, "bias": True, "gelu_approximation": "tanh"})
HINT = ("config.json holds the book's config dict: "
        + ", ".join(key.theirs for key in CONFIG_TABLE.keys))


def without_compiled_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The names a ``torch.compile``d model's state dict has, without ``_orig_mod.``."""
    return {name.removeprefix(COMPILED_PREFIX): tensor for name, tensor in tensors.items()}


def padding(tensors: dict[str, torch.Tensor]) -> dict:
    """The fast layout's 50,304 rows are GPT-2's 50,257 ids padded (model config values)."""
    if FAST_SENTINEL in tensors and tensors["tok_emb.weight"].shape[0] == PADDED_VOCABULARY:
        return {"vocab_size": GPT2_VOCABULARY, "padded_vocab_size": PADDED_VOCABULARY}
    return {}


def infer_config(tensors: dict[str, torch.Tensor], origin: str) -> dict:
    """The book's config from the tensor shapes alone, the head count from GPT-2's sizes.

    Raises:
        CheckpointError: when the shapes do not say it (another width, missing tensors).
    """
    try:
        rows, width = tensors["tok_emb.weight"].shape
        context = tensors["pos_emb.weight"].shape[0]
    except (KeyError, ValueError):
        raise CheckpointError(f"{origin}: tok_emb.weight or pos_emb.weight is missing or not "
                              "2-D") from None
    if width not in GPT2_HEADS:
        raise CheckpointError(
            f"{origin}: no config.json beside it, and emb_dim={width} is not one of GPT-2's "
            f"sizes ({', '.join(map(str, GPT2_HEADS))}), so the head count is unknown",
            hint="put the book's config dict beside it as config.json "
            '(json.dump(GPT_CONFIG_124M, open("config.json", "w")))')
    table = FAST_TABLE if FAST_SENTINEL in tensors else TABLE
    return {"vocab_size": rows, "context_length": context, "emb_dim": width,
            "n_heads": GPT2_HEADS[width], "n_layers": table.block_count(tensors),
            "qkv_bias": any(name in tensors for name in ("trf_blocks.0.att.W_query.bias",
                                                         "trf_blocks.0.att.qkv.bias"))}


def read_config(folder: Path, tensors: dict[str, torch.Tensor], origin: str
                ) -> tuple[dict, str, ConfigTable]:
    """The config beside the weights (the book's keys or Hugging Face's), else the one the
    shapes give: the values, the file they are from, and the table that reads them."""
    path = folder / "config.json"
    if not path.is_file():
        return infer_config(tensors, origin), origin, CONFIG_TABLE
    found = read_json(path)
    if isinstance(found, dict) and "n_embd" in found:
        check_architecture(found, origin=str(path))
        return found, str(path), HF_CONFIG_TABLE
    known = {key.theirs for key in CONFIG_TABLE.keys}
    unknown = sorted(set(found) - known) if isinstance(found, dict) else []
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(map(repr, unknown))}", hint=HINT)
    return found, str(path), CONFIG_TABLE


def causal_mask(context: int, dtype: torch.dtype) -> torch.Tensor:
    """The book's ``mask`` buffer: 1 above the diagonal, where a token would see the future."""
    return torch.triu(torch.ones(context, context, dtype=dtype), diagonal=1)


class Book(Format):
    name = "book"
    name_table = TABLE
    read_tables = ((FAST_TITLE, FAST_TABLE),)
    config_table = CONFIG_TABLE
    config_hint = HINT
    title = "The book's `GPTModel` state dict"
    summary = ("`model.pth` (or `model_and_optimizer.pth`, or `.safetensors`) + `config.json` "
               "with the book's config dict; read also: the faster training script's state dict "
               "(fused `att.qkv`, `nn.LayerNorm`, `_orig_mod.`, 50,304 rows, bf16)")
    head = "separate"
    vocabulary = "rows"
    holds_classifier = True  # ch. 6: out_head = nn.Linear(emb_dim, num_classes), with a bias
    tasks = ("language_model", "text_classification")
    holds_output_bias = True
    cannot_represent = ("an epsilon other than 1e-5 (refused); the exact GELU (refused unless "
                        "approximated); no biases (zeros: exact); a padded vocabulary; a bias "
                        "on a vocabulary head (refused); class names")
    proof = ("the book's own `GPTModel` (`pip install --no-deps llms-from-scratch`) loads the "
             "export with `strict=True` (a classifier with `out_head` replaced as ch. 6 does): "
             "logits within 1e-5 of transformers")

    def held_config(self, config: dict) -> dict:
        """ch. 6's classifier head has a bias (zeros where the model has none); ch. 4's
        language-model head has none."""
        return {**super().held_config(config), "output_bias": is_classifier(config)}

    def weights_file(self, candidate: Candidate) -> Candidate | None:
        """The file holding the book's state dict: the path itself, or in a folder a ``.pth``
        or ``model.safetensors`` that has ``tok_emb.weight`` (under ``_orig_mod.`` too)."""
        return next((found for sentinel in (SENTINEL, COMPILED_PREFIX + SENTINEL)
                     if (found := holding(candidate, sentinel, ("*.pth", "model.safetensors"),
                                          (WRAPPER,))) is not None), None)

    def recognises(self, candidate: Candidate) -> bool:
        return self.weights_file(candidate) is not None

    def read_raw(self, candidate: Candidate) -> Raw:
        weights = self.weights_file(candidate)
        tensors = without_compiled_prefix(weights.state_dict((WRAPPER,)))
        origin = str(weights.path)
        config, config_origin, config_table = read_config(weights.path.parent, tensors, origin)
        return Raw(origin, tensors, config, config_origin=config_origin,
                   config_table=config_table, extra=padding(tensors),
                   name_table=FAST_TABLE if FAST_SENTINEL in tensors else None)

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``model.pth`` with the mask buffers (so the book's ``GPTModel.load_state_dict(...,
        strict=True)`` takes it) and ``config.json`` holding the book's config dict."""
        held = placeholders(tensors)
        mask = causal_mask(config["context_length"], tensors.dtype)
        state = {**held, **{f"trf_blocks.{index}.att.mask": mask
                            for index in range(config["number_of_layers"])}}
        save_torch(destination / FILENAME, state, tensors, held)
        book = CONFIG_TABLE.from_model({**config, "vocab_size": config["padded_vocab_size"]})
        (destination / "config.json").write_text(json.dumps(book, indent=2))

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        """The book's names -> the model's by hand-written patterns, then GPT-2's."""
        weights = self.weights_file(Candidate(path))
        state = torch_loaded(weights.path)
        state = without_compiled_prefix(state.get(WRAPPER, state))
        patterns = [(r"^tok_emb\.", "token_embedding_table."),
                    (r"^pos_emb\.", "position_embedding_table."),
                    (r"^trf_blocks\.", "transformer_blocks."),
                    (r"\.att\.W_(\w+)\.", r".attention.\1_projection."),
                    (r"\.att\.out_proj\.", ".attention.output_projection."),
                    (r"\.ff\.layers\.0\.", ".feed_forward.expansion."),
                    (r"\.ff\.layers\.2\.", ".feed_forward.contraction."),
                    (r"\.norm1\.", ".attention_norm."), (r"\.norm2\.", ".feed_forward_norm."),
                    (r"^final_norm\.", "layer_norm."), (r"^out_head\.", "output_head."),
                    (r"\.att\.proj\.", ".attention.output_projection."),  # the fast layout
                    (r"norm\.weight$", "norm.scale"), (r"norm\.bias$", "norm.shift")]
        ours = {}
        for name, tensor in state.items():
            if name.endswith(".mask"):
                continue
            fused = re.fullmatch(r"trf_blocks\.(\d+)\.att\.qkv\.(weight|bias)", name)
            if fused:  # query | key | value rows
                for index, part in enumerate(("query", "key", "value")):
                    ours[f"transformer_blocks.{fused[1]}.attention.{part}_projection."
                         f"{fused[2]}"] = later(tensor.chunk(3)[index])
                continue
            for pattern, replacement in patterns:
                name = re.sub(pattern, replacement, name)
            ours[name] = later(tensor)
        values, origin, config_table = read_config(weights.path.parent, state, str(weights.path))
        config = config_table.to_model(values, origin=origin, extra={
            "tie_output_head": False, "output_size": state["out_head.weight"].shape[0],
            "output_bias": "out_head.bias" in state, **padding(state)})
        return to_conv1d_names(Arrays(ours), config), config
