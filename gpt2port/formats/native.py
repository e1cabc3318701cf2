"""gpt2port's own layout: one safetensors file in the model's names, the config in its metadata.

Nothing to rename or transpose, so it is the fastest thing to load.
"""

from __future__ import annotations

import json
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
    names = empty_model({**config, "number_of_layers": 1}).state_dict()
    templates = [name.replace("transformer_blocks.0.", "transformer_blocks.{}.") for name in names]
    return MappingTable("native", tuple(rule(name, name) for name in templates))


def config_from_metadata(metadata: dict[str, str], *, origin: str) -> dict:
    """The model config a native file carries."""
    try:
        return validate_config(json.loads(metadata[CONFIG_KEY]))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{origin}: metadata {CONFIG_KEY!r} is not JSON ({error})") from None
    except ConfigError as error:
        raise CheckpointError(f"{origin}: {error.message}") from None


def save(model: GPTModel, folder: Path) -> Path:
    """Write ``folder/model.safetensors``: the model's names, a tied head stored once."""
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config["tie_output_head"]:
        del state["output_head.weight"]  # the same tensor as the token embedding table
    path = Path(folder) / FILENAME
    save_file(state, path, metadata={"format": "pt", CONFIG_KEY: json.dumps(model.config)})
    return path
