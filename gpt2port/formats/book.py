"""The state dict of the book's ``GPTModel`` (*Build a Large Language Model (From Scratch)*).

``torch.save(model.state_dict(), "model.pth")`` (ch. 5), also inside ``model_and_optimizer.pth``
as ``model_state_dict``, or as ``.safetensors``. Every Linear is ``nn.Linear`` [out, in]; the
query, key and value projections are separate; ``att.mask`` buffers hold the causal mask.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..config import GPT2_HEADS, book_config, validate_config
from ..errors import CheckpointError, ConfigError
from ..readers import read_json
from .base import Candidate, Checkpoint, ConfigKey, Format, state_for_writing
from .huggingface import BLOCK, config_to_model
from .native import to_conv1d_names
from .table import MappingTable, from_model, rule

FILENAME = "model.pth"
# model_and_optimizer.pth is {"model_state_dict": ..., "optimizer_state_dict": ...}
WRAPPER = "model_state_dict"
SENTINEL = "tok_emb.weight"
BOOK_BLOCK = "trf_blocks.{}"
TABLE = MappingTable(
    format="book",
    rules=(
        rule("tok_emb.weight", "token_embedding_table.weight"),
        rule("pos_emb.weight", "position_embedding_table.weight"),
        *(rule(f"{BOOK_BLOCK}.att.W_{part}.{kind}", f"{BLOCK}.attention.{part}_projection.{kind}")
          for part in ("query", "key", "value") for kind in ("weight", "bias")),
        rule(f"{BOOK_BLOCK}.att.out_proj.weight", f"{BLOCK}.attention.output_projection.weight"),
        rule(f"{BOOK_BLOCK}.att.out_proj.bias", f"{BLOCK}.attention.output_projection.bias"),
        rule(f"{BOOK_BLOCK}.ff.layers.0.weight", f"{BLOCK}.feed_forward.expansion.weight"),
        rule(f"{BOOK_BLOCK}.ff.layers.0.bias", f"{BLOCK}.feed_forward.expansion.bias"),
        rule(f"{BOOK_BLOCK}.ff.layers.2.weight", f"{BLOCK}.feed_forward.contraction.weight"),
        rule(f"{BOOK_BLOCK}.ff.layers.2.bias", f"{BLOCK}.feed_forward.contraction.bias"),
        rule(f"{BOOK_BLOCK}.norm1.scale", f"{BLOCK}.attention_norm.scale"),
        rule(f"{BOOK_BLOCK}.norm1.shift", f"{BLOCK}.attention_norm.shift"),
        rule(f"{BOOK_BLOCK}.norm2.scale", f"{BLOCK}.feed_forward_norm.scale"),
        rule(f"{BOOK_BLOCK}.norm2.shift", f"{BLOCK}.feed_forward_norm.shift"),
        rule("final_norm.scale", "layer_norm.scale"),
        rule("final_norm.shift", "layer_norm.shift"),
        rule("out_head.weight", "output_head.weight"),  # written always; re-tied when equal
    ),
    ignored=(f"{BOOK_BLOCK}.att.mask",),  # the causal mask, a buffer
)
CONFIG_KEYS = (
    ConfigKey("vocab_size", "vocab_size"),
    ConfigKey("context_length", "context_length"),
    ConfigKey("emb_dim", "embedding_dimension"),
    ConfigKey("n_heads", "number_of_heads"),
    ConfigKey("n_layers", "number_of_layers"),
    ConfigKey("drop_rate", "dropout_rate", 0.1),
    ConfigKey("qkv_bias", "qkv_bias", False),
)


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
    blocks = TABLE.block_count(tensors)
    return {"vocab_size": rows, "context_length": context, "emb_dim": width,
            "n_heads": GPT2_HEADS[width], "n_layers": blocks, "drop_rate": 0.1,
            "qkv_bias": "trf_blocks.0.att.W_query.bias" in tensors}


def read_config(folder: Path, tensors: dict[str, torch.Tensor], origin: str) -> dict:
    """The model config from a config.json beside the weights (the book's keys or Hugging
    Face's), else from the shapes."""
    path = folder / "config.json"
    if not path.is_file():
        return validate_config(infer_config(tensors, origin))
    found = read_json(path)
    if "n_embd" in found:
        return config_to_model(found, origin=str(path))
    try:
        return validate_config(found)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error.message}", hint="config.json holds the book's config "
                          "dict: " + ", ".join(key.theirs for key in CONFIG_KEYS)) from None


def causal_mask(context: int, dtype: torch.dtype) -> torch.Tensor:
    """The book's ``mask`` buffer: 1 above the diagonal, where a token would see the future."""
    return torch.triu(torch.ones(context, context, dtype=dtype), diagonal=1)


class Book(Format):
    name = "book"
    name_table = TABLE
    title = "The book's `GPTModel` state dict"
    summary = ("`model.pth` (or `model_and_optimizer.pth`, or `.safetensors`) + `config.json` "
               "with the book's config dict")
    head = "separate"
    config_keys = CONFIG_KEYS
    assumes: ClassVar[dict] = {"layer_norm_epsilon": 1e-5, "bias": True,
                               "gelu_approximation": "tanh"}
    vocabulary = "rows"
    cannot_represent = ("an epsilon other than 1e-5 (refused); the exact GELU (refused unless "
                        "approximated); no biases (zeros: exact); a padded vocabulary")
    proof = ("the book's own `GPTModel` (`pip install --no-deps llms-from-scratch`) loads the "
             "export with `strict=True`: logits within 1e-5 of transformers")

    def weights_file(self, candidate: Candidate) -> Candidate | None:
        """The file holding the book's state dict: the path itself, or in a folder a ``.pth``
        or ``model.safetensors`` that has ``tok_emb.weight``."""
        path = candidate.path
        files = [candidate] if path.is_file() else [
            candidate.inside(file.name)
            for file in [*sorted(path.glob("*.pth")), path / "model.safetensors"] if file.is_file()]
        for each in files:
            state = each.state_dict((WRAPPER,))
            if state is not None and SENTINEL in state:
                return each
        return None

    def recognises(self, candidate: Candidate) -> bool:
        return self.weights_file(candidate) is not None

    def read(self, candidate: Candidate) -> Checkpoint:
        weights = self.weights_file(candidate)
        tensors = weights.state_dict((WRAPPER,))
        origin = str(weights.path)
        return Checkpoint(origin, tensors, read_config(weights.path.parent, tensors, origin),
                          TABLE, self)

    def write(self, model, folder: Path, *, dtype: str | None, tokenizer: Path | None) -> None:
        """``model.pth`` with the mask buffers (so the book's ``GPTModel.load_state_dict(...,
        strict=True)`` takes it) and ``config.json`` holding the book's config dict."""
        config = model.config
        state = state_for_writing(model, dtype)  # the book's head is its own tensor, always
        state["output_head.weight"] = model.output_head.weight.detach().to(
            state["token_embedding_table.weight"].dtype).contiguous()
        tensors = from_model(TABLE, state, config["number_of_layers"])
        mask = causal_mask(config["context_length"], tensors["tok_emb.weight"].dtype)
        for index in range(config["number_of_layers"]):
            tensors[f"trf_blocks.{index}.att.mask"] = mask
        folder = Path(folder)
        torch.save(tensors, folder / FILENAME)
        book = {**book_config(config), "vocab_size": config["padded_vocab_size"]}
        (folder / "config.json").write_text(json.dumps(book, indent=2))

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        """The book's names -> the model's by hand-written patterns, then GPT-2's."""
        weights = self.weights_file(Candidate(path))
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
        state = state.get(WRAPPER, state)
        patterns = [(r"^tok_emb\.", "token_embedding_table."),
                    (r"^pos_emb\.", "position_embedding_table."),
                    (r"^trf_blocks\.", "transformer_blocks."),
                    (r"\.att\.W_(\w+)\.", r".attention.\1_projection."),
                    (r"\.att\.out_proj\.", ".attention.output_projection."),
                    (r"\.ff\.layers\.0\.", ".feed_forward.expansion."),
                    (r"\.ff\.layers\.2\.", ".feed_forward.contraction."),
                    (r"\.norm1\.", ".attention_norm."), (r"\.norm2\.", ".feed_forward_norm."),
                    (r"^final_norm\.", "layer_norm."), (r"^out_head\.", "output_head.")]
        ours = {}
        for name, tensor in state.items():
            if name.endswith(".mask"):
                continue
            for pattern, replacement in patterns:
                name = re.sub(pattern, replacement, name)
            ours[name] = tensor.float().numpy()
        config = read_config(weights.path.parent, state, str(weights.path))
        return to_conv1d_names(ours, config), config
