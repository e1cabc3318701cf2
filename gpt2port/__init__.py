"""gpt2port: the open GPT-2 weights in a from-scratch model you can read, train and trust.

The names below are imported on first use, so that ``import gpt2port.cli`` (the command's entry
point) is instant and a Ctrl-C while torch loads still ends in the command's own message.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it (one import away: everything the CLI does)
_EXPORTS = {
    "GPT_CONFIG_124M": "config",
    "PRESETS": "config",
    "validate_config": "config",
    "CheckpointError": "errors",
    "CompileError": "errors",
    "ConfigError": "errors",
    "DownloadError": "errors",
    "Gpt2portError": "errors",
    "MappingError": "errors",
    "OutputError": "errors",
    "TokenizerError": "errors",
    "VerificationError": "errors",
    "GPTModel": "model",
    "load_pretrained": "loading",
    "load_tokenizer": "loading",
    "generate": "engine.generation",
    "stream": "engine.generation",
    "convert": "conversion",
    "verify": "proof.verification",
    "Verification": "proof.verification",
    "compare": "proof.comparison",
    "Comparison": "proof.comparison",
    "inspect": "inspection",
}
__all__ = [
    "GPT_CONFIG_124M",
    "PRESETS",
    "CheckpointError",
    "Comparison",
    "CompileError",
    "ConfigError",
    "DownloadError",
    "GPTModel",
    "Gpt2portError",
    "MappingError",
    "OutputError",
    "TokenizerError",
    "Verification",
    "VerificationError",
    "compare",
    "convert",
    "generate",
    "inspect",
    "load_pretrained",
    "load_tokenizer",
    "stream",
    "validate_config",
    "verify",
]

if TYPE_CHECKING:
    from .config import GPT_CONFIG_124M, PRESETS, validate_config
    from .conversion import convert
    from .engine.generation import generate, stream
    from .errors import (
        CheckpointError,
        CompileError,
        ConfigError,
        DownloadError,
        Gpt2portError,
        MappingError,
        OutputError,
        TokenizerError,
        VerificationError,
    )
    from .inspection import inspect
    from .loading import load_pretrained, load_tokenizer
    from .model import GPTModel
    from .proof.comparison import Comparison, compare
    from .proof.verification import Verification, verify


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2port' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
