"""gpt2port: the open GPT-2 weights in a from-scratch model you can read, train and trust."""

from .config import GPT_CONFIG_124M, PRESETS, validate_config
from .errors import CheckpointError, ConfigError, Gpt2portError, MappingError, TokenizerError
from .generation import generate
from .loading import load_pretrained
from .model import GPTModel
from .tokenizer import load_tokenizer

__all__ = [
    "GPT_CONFIG_124M",
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "GPTModel",
    "Gpt2portError",
    "MappingError",
    "TokenizerError",
    "generate",
    "load_pretrained",
    "load_tokenizer",
    "validate_config",
]
