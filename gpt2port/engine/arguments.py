"""What a caller hands ``generate`` and ``stream``, checked before any step: the model, the
token ids, the mask and the options. Each problem is gpt2port's own ``ConfigError`` naming the
argument, never an index error inside torch or a read outside a table in the compiled step."""

from __future__ import annotations

import math
import numbers

import torch

from ..config import TASKS, is_classifier
from ..errors import ConfigError
from ..model import GPTModel

HINT = ("token ids are whole numbers from 0 to the model's vocab_size - 1, as its own "
        "tokenizer encodes text (gpt2port.load_tokenizer)")


def check_model(model: object) -> GPTModel:
    """``model`` when it is a ``GPTModel`` that predicts tokens.

    Raises:
        ConfigError: for anything else, a classifier included.
    """
    if not isinstance(model, GPTModel):
        raise ConfigError(f"model: a GPTModel is needed, got {type(model).__name__}",
                          hint="load one with gpt2port.load_pretrained(...)")
    if is_classifier(model.config):
        task = model.config["task"]
        read = ("read the last token's scores (model(ids)[:, -1])"
                if task == "text_classification" else "read every position's scores")
        raise ConfigError(f"the model is {TASKS[task]} ({model.config['output_size']} "
                          "outputs): it does not predict tokens",
                          hint=f"run it on token ids and {read}; generate with a language model")
    return model


def check_options(max_new_tokens: object, *, temperature: object, top_k: object,
                  top_p: object, seed: object) -> None:
    """Raise ConfigError naming every generation option that cannot work."""
    problems = []
    if not _is_whole(max_new_tokens) or max_new_tokens < 0:
        problems.append(f"max_new_tokens must be 0 or more, got {max_new_tokens!r}")
    if not (_is_real(temperature) and 0 <= temperature < float("inf")):
        problems.append(f"temperature must be 0 (greedy) or more, got {temperature!r}")
    if top_k is not None and not (_is_whole(top_k) and top_k >= 1):
        problems.append(f"top_k must be 1 or more, got {top_k!r}")
    if top_p is not None and not (_is_real(top_p) and 0 < top_p <= 1):
        problems.append(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is not None and not (_is_whole(seed) and 0 <= seed < 2**63):
        problems.append(f"seed must be an integer from 0 to 2**63 - 1, got {seed!r}")
    if problems:
        raise ConfigError("; ".join(problems), hint="temperature 0 is greedy; top_k and top_p "
                          "narrow sampling (top_p=1 keeps every token)")


def checked_ids(model: GPTModel, token_ids: object) -> torch.Tensor:
    """``token_ids`` (B, T) as a tensor of ids the model has, on its device.

    Raises:
        ConfigError: for ids that are not whole numbers, an empty or ragged batch, ids outside
            the vocabulary, or ids on another device than the model.
    """
    device = model.token_embedding_table.weight.device
    if isinstance(token_ids, torch.Tensor):
        if token_ids.dtype in (torch.bool, torch.complex64, torch.complex128) or (
                token_ids.is_floating_point()):
            raise ConfigError(f"token_ids must hold whole numbers, got a {token_ids.dtype} "
                              "tensor", hint="pass a torch.long tensor of shape (batch, tokens)")
        if token_ids.dim() != 2 or 0 in token_ids.shape:
            raise ConfigError("token_ids must be (batch, tokens) with at least one of each, got "
                              f"shape {list(token_ids.shape)}",
                              hint="wrap one prompt as [ids]: torch.tensor([ids])")
        if token_ids.device != device:
            raise ConfigError(f"token_ids are on {token_ids.device}, the model on {device}",
                              hint=f"move them: token_ids.to({str(device)!r})")
        ids = token_ids.long()
    else:
        rows = checked_rows(model, token_ids)
        if len({len(row) for row in rows}) != 1:
            raise ConfigError("token_ids rows differ in length",
                              hint="pass them to generate as a list, or pad them (pad_left)")
        ids = torch.tensor(rows, dtype=torch.long, device=device)
    vocabulary = model.config["vocab_size"]
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocabulary:
        bad = low if low < 0 else high
        raise ConfigError(f"token id {bad} is outside the model's vocabulary (0 to "
                          f"{vocabulary - 1})", hint=HINT)
    return ids


def check_mask(mask: object, ids: torch.Tensor) -> torch.Tensor | None:
    """``attention_mask`` (B, T) of 0 (left padding) and 1, or None.

    Raises:
        ConfigError: for a mask of another shape or other values.
    """
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != ids.shape or mask.device != ids.device:
        raise ConfigError(f"attention_mask must be a tensor of the ids' shape {list(ids.shape)} "
                          f"on {ids.device}", hint="see gpt2port.engine.generation.pad_left")
    if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()) or not bool(
            mask[:, -1].all()):
        raise ConfigError("attention_mask must be 0 (left padding) and 1, ending in 1",
                          hint="see gpt2port.engine.generation.pad_left")
    return mask.long()


def checked_rows(model: GPTModel, prompts: object) -> list[list[int]]:
    """``prompts`` as lists of ids the model has (their lengths may differ).

    Raises:
        ConfigError: for anything but a non-empty list of non-empty lists of whole numbers
            from 0 to the vocabulary's size - 1.
    """
    rows = ([list(row) if isinstance(row, (list, tuple)) else None for row in prompts]
            if isinstance(prompts, (list, tuple)) else None)
    if not rows or not all(rows):
        raise ConfigError("token_ids must be a (batch, tokens) tensor or a non-empty list of "
                          f"non-empty id lists, got {_brief(prompts)}",
                          hint="wrap one prompt as [ids]")
    vocabulary = model.config["vocab_size"]
    for row in rows:
        for i in row:
            if not _is_whole(i):
                raise ConfigError(f"token ids must be whole numbers, got {_brief(i)}", hint=HINT)
            if not 0 <= i < vocabulary:
                raise ConfigError(f"token id {i} is outside the model's vocabulary (0 to "
                                  f"{vocabulary - 1})", hint=HINT)
    return [[int(i) for i in row] for row in rows]


def _is_whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
