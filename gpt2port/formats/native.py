"""gpt2port's own layout: one safetensors file in the model's names, the config in its metadata.

Nothing to rename or transpose, so it is the fastest thing to load, and it holds every model
config key as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import TASKS, validate_config
from ..errors import CheckpointError, ConfigError
from ..io.arrays import Arrays
from ..io.writers import write_safetensors
from ..text.vocabulary import Vocabulary
from .base import Candidate, ConfigKey, ConfigTable, Format, Raw, safetensors_later
from .table import MappingTable

CONFIG_KEY = "gpt2port_config"  # safetensors metadata key holding the model config as JSON
FILENAME = "model.safetensors"


TABLE = MappingTable.identity("native")


class EveryKey(ConfigTable):
    """The model config as it is, JSON in the safetensors metadata."""

    def to_model(self, theirs, *, origin: str, extra: dict | None = None,
                 hint: str | None = None) -> dict:
        try:
            config = json.loads(theirs[CONFIG_KEY])
            return validate_config({**config, **(extra or {})})
        except (json.JSONDecodeError, TypeError) as error:
            raise CheckpointError(f"{origin}: metadata {CONFIG_KEY!r} is not JSON "
                                  f"({error})") from None
        except ConfigError as error:
            raise CheckpointError(f"{origin}: {error.message}") from None

    def from_model(self, config: dict) -> dict:
        return {CONFIG_KEY: json.dumps(config)}


class Native(Format):
    name = "native"
    name_table = TABLE
    config_table = EveryKey((ConfigKey(f"{CONFIG_KEY} (JSON)", "every key"),))
    title = "gpt2port native"
    summary = f"one `{FILENAME}` in the model's own names, the config in its metadata"
    proof = "round trips with every other format are bit-exact; the safetensors library reads it"
    holds_classifier = holds_output_bias = holds_labels = True
    tasks = tuple(TASKS)

    def recognises(self, candidate: Candidate) -> bool:
        found = _weights(candidate)
        return found.is_safetensors and CONFIG_KEY in found.safetensors[1]

    def read_raw(self, candidate: Candidate) -> Raw:
        found = _weights(candidate)
        tensors, metadata = found.safetensors
        return Raw(str(found.path), tensors, metadata)

    def write_raw(self, destination: Path, tensors, config: dict, *, dtype: str | None,
                  vocabulary: Vocabulary | None) -> None:
        """``folder/model.safetensors``: the model's names, a tied head stored once."""
        write_safetensors(destination / FILENAME, tensors,
                          metadata={"format": "pt", **self.config_table.from_model(config)})

    def reference_tensors(self, path: Path) -> tuple[Arrays, dict]:
        from safetensors import safe_open  # the safetensors library, not our reader

        path = path / FILENAME if path.is_dir() else path
        with safe_open(path, "np") as file:
            config = validate_config(json.loads(file.metadata()[CONFIG_KEY]))
        return to_conv1d_names(Arrays(safetensors_later(path)[0]), config), config


def _weights(candidate: Candidate) -> Candidate:
    """The path itself, or ``model.safetensors`` in a folder."""
    return candidate.inside(FILENAME) if candidate.path.is_dir() else candidate


def to_conv1d_names(ours: Arrays, config: dict) -> Arrays:
    """The model's own names and [out, in] weights -> GPT-2's Conv1D names and [in, out],
    written out by hand (not through a mapping table), for the NumPy reference; each made from
    ``ours`` when looked up."""
    def one(name: str, transposed: bool = False):
        return lambda: ours[name].T if transposed else ours[name]

    def joined(names: list[str], transposed: bool = False):
        return lambda: (np.concatenate([ours[name] for name in names]).T if transposed
                        else np.concatenate([ours[name] for name in names]))

    arrays = {"wte.weight": one("token_embedding_table.weight"),
              "wpe.weight": one("position_embedding_table.weight"),
              "ln_f.weight": one("layer_norm.scale")}
    optional = {"ln_f.bias": "layer_norm.shift", "lm_head.weight": "output_head.weight",
                "lm_head.bias": "output_head.bias"}
    arrays.update({theirs: one(name) for theirs, name in optional.items() if name in ours})
    for i in range(config["number_of_layers"]):
        block, h = f"transformer_blocks.{i}", f"h.{i}"
        parts = [f"{block}.attention.{p}_projection" for p in ("query", "key", "value")]
        arrays[f"{h}.attn.c_attn.weight"] = joined([f"{p}.weight" for p in parts], True)
        if f"{parts[0]}.bias" in ours:
            arrays[f"{h}.attn.c_attn.bias"] = joined([f"{p}.bias" for p in parts])
        pairs = {"ln_1": "attention_norm", "ln_2": "feed_forward_norm"}
        for theirs, name in pairs.items():
            arrays[f"{h}.{theirs}.weight"] = one(f"{block}.{name}.scale")
            if f"{block}.{name}.shift" in ours:
                arrays[f"{h}.{theirs}.bias"] = one(f"{block}.{name}.shift")
        linears = {"attn.c_proj": "attention.output_projection",
                   "mlp.c_fc": "feed_forward.expansion", "mlp.c_proj": "feed_forward.contraction"}
        for theirs, name in linears.items():
            arrays[f"{h}.{theirs}.weight"] = one(f"{block}.{name}.weight", True)
            if f"{block}.{name}.bias" in ours:
                arrays[f"{h}.{theirs}.bias"] = one(f"{block}.{name}.bias")
    return Arrays(arrays)
