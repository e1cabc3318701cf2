"""What every checkpoint format declares in one place, and the registry the rest iterates.

A format is one module under ``gpt2port/formats/`` holding one ``Format`` subclass: its name
(the ``--to`` value), how it recognises a path, its reader and writer, its tensor-name table and
config table (with the defaults it assumes), head tying, the dtypes it stores and what it cannot
represent. ``load_pretrained``, ``convert``, ``inspect``, ``verify``, the CLI and the docs only
iterate ``FORMATS``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..files import copy_tokenizer
from ..readers import load_pickle, read_safetensors
from ..tokenizer import FILE_NAMES
from .table import MappingTable

REQUIRED = "(required)"  # a ConfigKey default: the format has no value to assume


@dataclass(frozen=True)
class ConfigKey:
    """A key of the format's own config, the model config key it holds, and the value the format
    assumes when the key is absent."""

    theirs: str
    ours: str
    default: object = REQUIRED


@dataclass
class Checkpoint:
    """A checkpoint's tensors under their own names, its format's table, and the model config."""

    origin: str
    tensors: dict[str, torch.Tensor]
    config: dict
    table: MappingTable
    format: Format


class Candidate:
    """A path being recognised: what formats look at, each read at most once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._inside: dict[str, Candidate] = {}

    def inside(self, name: str) -> Candidate:
        """The file ``name`` in this folder, as a candidate shared by every format that looks."""
        if name not in self._inside:
            self._inside[name] = Candidate(self.path / name)
        return self._inside[name]

    @cached_property
    def magic(self) -> bytes:
        """The first 8 bytes of a file (empty for a folder or an unreadable file)."""
        if not self.path.is_file():
            return b""
        try:
            with open(self.path, "rb") as file:
                return file.read(8)
        except OSError:
            return b""

    @cached_property
    def is_pickle(self) -> bool:
        """A ``torch.save`` file: a zip archive or a legacy pickle stream."""
        return self.magic[:4] == b"PK\x03\x04" or self.magic[:1] == b"\x80"

    @cached_property
    def pickled(self) -> object:
        """The object a ``torch.save`` file holds, unpickled with ``weights_only=True``."""
        return load_pickle(self.path)

    @cached_property
    def safetensors(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return read_safetensors(self.path)

    @cached_property
    def is_safetensors(self) -> bool:
        if len(self.magic) < 8 or self.path.suffix != ".safetensors":
            return False
        (length,) = struct.unpack("<Q", self.magic)
        return 0 < length <= self.path.stat().st_size - 8

    def state_dict(self, wrappers: tuple[str, ...] = ()) -> dict[str, torch.Tensor] | None:
        """The name -> tensor dict this file holds (inside one of ``wrappers``' keys, such as
        ``model_state_dict``), or None when it holds none."""
        if self.is_safetensors:
            return self.safetensors[0]
        if not self.is_pickle:
            return None
        found = self.pickled
        for key in wrappers:
            if isinstance(found, dict) and isinstance(found.get(key), dict):
                found = found[key]
                break
        if isinstance(found, dict) and found and all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in found.items()):
            return found
        return None


class Format:
    """One checkpoint layout. Subclasses set the attributes and implement the methods."""

    name: str  # the --to value
    name_table: MappingTable  # checkpoint names <-> model names (``table`` when it depends on
    # the config)
    title: str
    summary: str  # the files it is, in a few words
    dtypes: tuple[str, ...] = ("f32", "f16", "bf16")  # --dtype values it stores
    # "tied": no head tensor of its own; "either": stored when untied; "separate": always stored
    # (tied again on reading when it equals the token embedding)
    head: str = "either"
    config_keys: tuple[ConfigKey, ...] = ()
    # model config values the format has no place for: what it holds instead
    assumes: ClassVar[dict] = {}
    vocabulary: str = "both"  # "rows": it knows only the tables' rows, not a padded vocabulary
    cannot_represent: str = "nothing"
    proof: str = ""
    tokenizer_names: tuple[str, str] | None = FILE_NAMES[0]  # None: the writer stores it
    read_by_transformers = False  # a folder transformers' GPT2LMHeadModel loads as it is
    file_suffix: str | None = None  # a destination ending so is written as one file

    def write_tokenizer(self, source: Path | None, folder: Path) -> None:
        """Copy the tokenizer files of ``source`` (a folder) beside the weights."""
        if self.tokenizer_names is not None:
            copy_tokenizer(source, folder, self.tokenizer_names)

    def table(self, config: dict) -> MappingTable:
        return self.name_table

    def recognises(self, candidate: Candidate) -> bool:
        raise NotImplementedError

    def read(self, candidate: Candidate) -> Checkpoint:
        raise NotImplementedError

    def write(self, model, folder: Path, *, dtype: str | None, tokenizer: Path | None) -> None:
        """Write ``model`` into the new ``folder`` (``dtype`` None: the model's own)."""
        raise NotImplementedError

    def write_file(self, model, path: Path, *, dtype: str | None, tokenizer: Path | None
                   ) -> None:
        """Write ``model`` as the one file ``path`` (formats with a ``file_suffix``)."""
        raise NotImplementedError

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        """The checkpoint's own tensors renamed to GPT-2's Conv1D names (``h.0.attn.c_attn.weight``
        [in, out]) by code independent of the mapping table, and its model config: what the
        NumPy reference runs."""
        raise NotImplementedError

    def held_config(self, config: dict) -> dict:
        """The model config as this format stores it: values it has no place for become the
        ones it assumes."""
        held = {**config, **self.assumes}
        if self.vocabulary == "rows":
            held["vocab_size"] = config["padded_vocab_size"]
        if self.head == "tied":
            held["tie_output_head"] = True
        return held

    def config_table_markdown(self) -> str:
        rows = [f"| `{key.theirs}` | `{key.ours}` | {_shown(key.default)} |"
                for key in self.config_keys]
        rows += [f"| (none) | `{ours}` | {_shown(value)} |" for ours, value in self.assumes.items()]
        return "\n".join(["| their key | model config key | assumed when absent |",
                          "|---|---|---|", *rows])


def _shown(value: object) -> str:
    return value if value == REQUIRED else f"`{json.dumps(value)}`"


def torch_dtype(dtype: str | None, model) -> torch.dtype:
    """A --dtype value (f32, f16, bf16) as a torch dtype; None: the model's own."""
    if dtype is None:
        return model.token_embedding_table.weight.dtype
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]


def state_for_writing(model, dtype: str | None) -> dict[str, torch.Tensor]:
    """The model's tensors in ``dtype``, contiguous, without a tied head's duplicate."""
    wanted = torch_dtype(dtype, model)
    state = {name: tensor.detach().to(wanted).contiguous()
             for name, tensor in model.state_dict().items()}
    if model.config["tie_output_head"]:
        del state["output_head.weight"]
    return state
