"""gpt2port's own layout: one safetensors file in the model's names, the config in its metadata.

Nothing to rename or transpose, so it is the fastest thing to load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from ..config import validate_config
from ..errors import CheckpointError, ConfigError
from ..model import GPTModel, empty_model
from .table import MappingTable, rule

CONFIG_KEY = "gpt2port_config"  # safetensors metadata key holding the model config as JSON
FILENAME = "model.safetensors"


def table(config: dict) -> MappingTable:
    """The identity mapping: every tensor of this config's model under its own name."""
    return MappingTable("native", tuple(rule(name, name)
                                        for name in empty_model(config).state_dict()))


def config_from_metadata(metadata: dict[str, str], *, origin: str) -> dict:
    """The model config a native file carries."""
    try:
        return validate_config(json.loads(metadata[CONFIG_KEY]))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{origin}: metadata {CONFIG_KEY!r} is not JSON ({error})") from None
    except ConfigError as error:
        raise CheckpointError(f"{origin}: {error.message}") from None


TOKENIZER_FILES = ("vocab.json", "merges.txt")


def save(model: GPTModel, folder: Path, *, tokenizer_from: Path | None = None) -> Path:
    """Write ``folder/model.safetensors`` (and the tokenizer files found in ``tokenizer_from``).

    Each file is written under a temporary name and renamed into place when complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if tokenizer_from is not None and (Path(tokenizer_from) / name).is_file():
            source = Path(tokenizer_from) / name
            _write_atomically(folder / name, lambda partial: shutil.copyfile(source, partial))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config["tie_output_head"]:
        del state["output_head.weight"]  # the same tensor as the token embedding table
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(model.config)}
    return _write_atomically(folder / FILENAME,
                             lambda partial: save_file(state, partial, metadata=metadata))


def _write_atomically(final: Path, write: Callable[[Path], object]) -> Path:
    """``write`` a temporary file beside ``final``, then rename it into place."""
    partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
    try:
        write(partial)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final
