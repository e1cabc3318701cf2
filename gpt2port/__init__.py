"""gpt2port: the open GPT-2 weights in a from-scratch model you can read, train and trust.

The names below are imported on first use, so that ``import gpt2port.cli`` (the command's entry
point) is instant and a Ctrl-C while torch loads still ends in the command's own message.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# public name -> the module that defines it
_EXPORTS = {
    "GPT_CONFIG_124M": "config",
    "PRESETS": "config",
    "validate_config": "config",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "Gpt2portError": "errors",
    "MappingError": "errors",
    "TokenizerError": "errors",
    "OutputError": "errors",
    "compare": "proof.comparison",
    "Comparison": "proof.comparison",
    "generate": "engine.generation",
    "load_pretrained": "loading",
    "GPTModel": "model",
    "load_tokenizer": "loading",
}
__all__ = [
    "GPT_CONFIG_124M",
    "PRESETS",
    "CheckpointError",
    "Comparison",
    "ConfigError",
    "GPTModel",
    "Gpt2portError",
    "MappingError",
    "OutputError",
    "TokenizerError",
    "compare",
    "generate",
    "load_pretrained",
    "load_tokenizer",
    "validate_config",
]

if TYPE_CHECKING:
    from .config import GPT_CONFIG_124M, PRESETS, validate_config
    from .engine.generation import generate
    from .errors import (
        CheckpointError,
        ConfigError,
        Gpt2portError,
        MappingError,
        OutputError,
        TokenizerError,
    )
    from .loading import load_pretrained, load_tokenizer
    from .model import GPTModel
    from .proof.comparison import Comparison, compare


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gpt2port' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
