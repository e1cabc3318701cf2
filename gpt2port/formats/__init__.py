"""Checkpoint formats: one module per format, one ``Format`` each, and the registry.

``FORMATS`` is in the order paths are recognised: the most specific layouts first, Hugging
Face's (any weights file with a ``config.json`` beside it) last.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from .base import Candidate, Checkpoint, Format
from .book import Book
from .gguf import Gguf
from .huggingface import HuggingFace
from .llmc import LlmC
from .nanogpt import NanoGPT
from .native import Native
from .onnx import Onnx
from .openai import OpenAI
from .tlens import TransformerLens

FORMATS: tuple[Format, ...] = (OpenAI(), Gguf(), LlmC(), NanoGPT(), Book(),
                               TransformerLens(), Onnx(), Native(), HuggingFace())
BY_NAME = {each.name: each for each in FORMATS}


def _recognised(path: Path) -> tuple[Format, Candidate]:
    candidate = Candidate(path)
    for each in FORMATS:
        if each.recognises(candidate):
            return each, candidate
    hint = "formats: " + ", ".join(BY_NAME) + " (see docs/formats.md)"
    if candidate.path.is_dir():
        present = ", ".join(sorted(p.name for p in candidate.path.iterdir()))
        if not present:
            raise CheckpointError(f"{path}: the folder is empty",
                                  hint="point at a folder holding a checkpoint, or fill this "
                                  "one: gpt2port download gpt2 --output FOLDER")
        raise CheckpointError(f"{path}: no checkpoint of a known format; the folder has "
                              f"{present}", hint=hint)
    raise CheckpointError(f"{path}: not a checkpoint file of a known format", hint=hint)


def recognise(path: Path) -> Format:
    """The format of a checkpoint file or folder.

    Raises:
        CheckpointError: listing what the path holds when no format claims it.
    """
    return _recognised(path)[0]


def read(path: Path) -> Checkpoint:
    """Recognise ``path`` and read it: tensors under their own names, and the model config."""
    found, candidate = _recognised(path)
    return found.read(candidate)


__all__ = ["BY_NAME", "FORMATS", "Candidate", "Checkpoint", "Format", "read", "recognise"]
