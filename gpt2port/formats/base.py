"""What every checkpoint format declares, and the base class that does the common work.

A format is one module under ``gpt2port/formats/`` holding one ``Format`` subclass: its name
(the ``--to`` value), how it recognises a path, its raw reader and writer (named tensors and its
own config values), its tensor-name table and config table (with the values it assumes), head
tying, the dtypes it stores and what it cannot represent. ``Format.read`` and ``Format.write``
apply the tables, decide head tying, validate the config once and write the tokenizer;
``load_pretrained``, ``convert``, ``inspect``, ``verify``, the CLI and the docs only iterate
``FORMATS``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..config import complete_config, config_hint, config_problems
from ..errors import ConfigError
from ..io.readers import load_pickle, read_safetensors
from ..text.vocabulary import Vocabulary, read_folder, write_tokenizer_files
from .stream import TensorStream
from .table import MappingTable

REQUIRED = "(required)"  # a ConfigKey default: the format has no value to assume
FLOAT_KEYS = ("dropout_rate", "layer_norm_epsilon")  # JSON may write 1 for 1.0


@dataclass(frozen=True)
class ConfigKey:
    """A key of the format's own config, the model config key it holds, the value the format
    assumes when the key is absent, and (``values``) their values -> the model's, where they
    differ."""

    theirs: str
    ours: str | tuple[str, ...]  # several: each of ``values`` is a tuple of their values
    default: object = REQUIRED
    values: dict | None = None
    values_are: str = "a value this format knows"  # what ``values`` holds, for errors

    @property
    def model_keys(self) -> tuple[str, ...]:
        return self.ours if isinstance(self.ours, tuple) else (self.ours,)


@dataclass(frozen=True)
class ConfigTable:
    """A format's config keys, and the model config values it has no key for (``assumes``)."""

    keys: tuple[ConfigKey, ...]
    assumes: dict = field(default_factory=dict)
    derived: dict = field(default_factory=dict)  # model config key -> where it is read from

    def names(self) -> dict[str, str]:
        """Model config key -> the format's key, for error messages in the user's terms."""
        return {ours: key.theirs for key in self.keys for ours in key.model_keys}

    def to_model(self, theirs: Mapping, *, origin: str, extra: dict | None = None,
                 hint: str | None = None) -> dict:
        """The format's config values -> the validated model config (``extra``: values read
        from elsewhere, such as tensor shapes).

        Raises:
            ConfigError: naming every key that is missing or cannot work, in the format's terms.
        """
        if not isinstance(theirs, Mapping):
            raise ConfigError(f"{origin}: the config is not a dict", hint=hint)
        missing = [key.theirs for key in self.keys
                   if key.default == REQUIRED and key.theirs not in theirs]
        problems = [f"lacks {', '.join(missing)}"] if missing else []
        config = {}
        for key in (key for key in self.keys if key.theirs not in missing):
            value = theirs.get(key.theirs, key.default)
            if key.values is not None:
                if not (isinstance(value, str) and value in key.values):
                    problems.append(f"{key.theirs} {value!r} is not {key.values_are} "
                                    f"({', '.join(key.values)})")
                    continue
                value = key.values[value]
            if key.ours in FLOAT_KEYS and type(value) is int:
                value = float(value)
            config.update(zip(key.model_keys, value) if isinstance(key.ours, tuple)
                          else [(key.ours, value)])
        config = {**config, **self.assumes, **(extra or {})}
        found = config_problems(config, names=self.names())
        if found and not problems:
            raise ConfigError(f"{origin}: model config cannot work: " + "; ".join(found),
                              hint=config_hint(found, names=self.names()))
        problems += [problem for problem in found if not problem.startswith("missing key")]
        if problems:
            raise ConfigError(f"{origin}: " + "; ".join(problems), hint=hint or (
                "it needs " + ", ".join(key.theirs for key in self.keys)))
        return complete_config(config)

    def from_model(self, config: dict) -> dict:
        """The model config -> the format's keys (a value map's first spelling is written)."""
        theirs = {}
        for key in self.keys:
            value = (tuple(config[ours] for ours in key.ours) if isinstance(key.ours, tuple)
                     else config[key.ours])
            if key.values is not None:
                value = next(name for name, ours in key.values.items() if ours == value)
            theirs[key.theirs] = value
        return theirs

    def markdown(self) -> str:
        rows = [f"| `{key.theirs}` | {', '.join(f'`{ours}`' for ours in key.model_keys)} | "
                f"{_shown(key.default)} |" for key in self.keys]
        rows += [f"| (none) | `{ours}` | {_shown(value)} |" for ours, value in self.assumes.items()]
        rows += [f"| ({where}) | `{ours}` | |" for ours, where in self.derived.items()]
        return "\n".join(["| their key | model config key | assumed when absent |",
                          "|---|---|---|", *rows])


@dataclass
class Raw:
    """What a format's reader gives: the tensors under their own names (memory-mapped views), the
    format's own config values, and model config values read from elsewhere."""

    origin: str
    tensors: dict[str, torch.Tensor]
    config: Mapping
    extra: dict = field(default_factory=dict)
    config_origin: str | None = None  # the file the config is in, where not ``origin``
    config_table: ConfigTable | None = None  # where not the format's own (a config.json of
    # Hugging Face's keys beside the book's weights)
    name_table: MappingTable | None = None  # where not the format's own (a classifier's names)
    # reads the tokenizer from what the weights' reader already parsed (a GGUF's metadata),
    # where parsing the file again would cost; None: the format's read_vocabulary
    vocabulary: Callable[[], Vocabulary | None] | None = None


@dataclass
class Checkpoint:
    """A checkpoint's tensors under their own names, its format's table, the model config, and
    its tokenizer (read by its format on first use, once)."""

    origin: str
    tensors: dict[str, torch.Tensor]
    config: dict
    table: MappingTable
    format: Format
    path: Path
    read_vocabulary: Callable[[], Vocabulary | None] | None = None  # Raw.vocabulary
    # a LoRA adapter merged on loading (gpt2port.adapters.lora), and the base's own config that
    # the tensors are mapped with; ``config`` is then the merged model's
    adapter: object | None = None
    base_config: dict | None = None

    @cached_property
    def vocabulary(self) -> Vocabulary | None:
        """The checkpoint's tokenizer, None where it has none.

        Raises:
            TokenizerError: when its files cannot be read or disagree.
        """
        if self.read_vocabulary is not None:
            return self.read_vocabulary()
        return self.format.read_vocabulary(self.path)


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


def holding(candidate: Candidate, sentinel: str, patterns: tuple[str, ...],
            wrappers: tuple[str, ...] = ()) -> Candidate | None:
    """The file whose state dict has the tensor ``sentinel``: the path itself, or in a folder
    the first file matching one of ``patterns`` (globs, in order)."""
    path = candidate.path
    files = [candidate] if path.is_file() else [
        candidate.inside(file.name)
        for pattern in patterns for file in sorted(path.glob(pattern)) if file.is_file()]
    for each in files:
        state = each.state_dict(wrappers)
        if state is not None and sentinel in state:
            return each
    return None


class Format:
    """One checkpoint layout. A subclass declares its tables and attributes, recognises paths and
    implements ``read_raw`` and ``write_raw``; ``read`` and ``write`` apply the tables."""

    name: str  # the --to value
    name_table: MappingTable  # checkpoint names <-> model slots
    # other layouts of the format it reads (never writes), each with what it is, for the docs
    read_tables: tuple[tuple[str, MappingTable], ...] = ()
    config_table: ConfigTable
    title: str
    summary: str  # the files it is, in a few words
    dtypes: tuple[str, ...] = ("f32", "f16", "bf16")  # --dtype values it stores
    # "tied": no head tensor of its own; "either": stored when untied; "separate": always stored
    # (tied again on reading when it equals the token embedding)
    head: str = "either"
    vocabulary: str = "both"  # "rows": it knows only the tables' rows, not a padded vocabulary
    cannot_represent: str = "nothing"
    proof: str = ""
    # how it keeps the tokenizer, for docs/formats.md: the default is transformers' files beside
    tokenizer = ("transformers' files beside it (vocab.json, merges.txt, tokenizer.json, "
                 "tokenizer_config.json), added tokens included")
    read_by_transformers = False  # a folder transformers' GPT2LMHeadModel loads as it is
    file_suffix: str | None = None  # a destination ending so is written as one file
    config_hint: str | None = None  # the hint for a config that cannot work
    converts_dtype = True  # False: write_raw gets the model's own tensors and encodes --dtype
    # what the NumPy reference reads the files with (none of it the loader's reader)
    reference_reads_with = "the safetensors library or torch.load"
    # what the output head may be besides a language-model head without bias
    holds_classifier = False  # fewer rows than the vocabulary (output_size)
    holds_output_bias = False
    holds_labels = False  # a classifier's class names (output_labels)
    tasks: tuple[str, ...] = ("language_model",)  # what its heads can be for (config.TASKS)
    # an attention scale other than its own is folded into the query projections (exact but for
    # rounding: scores are linear in the query)
    folds_attention_scale = False
    runtime: str | None = None  # the package that runs the file itself (``runtime_logits``)

    def recognises(self, candidate: Candidate) -> bool:
        raise NotImplementedError

    def transformers_reads(self, path: Path) -> bool:
        """Whether transformers' PyTorch classes load the checkpoint at ``path`` as it is."""
        return self.read_by_transformers and Path(path).is_dir()

    def read_raw(self, candidate: Candidate) -> Raw:
        """The checkpoint's tensors under their own names and its own config values."""
        raise NotImplementedError

    def write_raw(self, destination: Path, tensors: TensorStream, config: dict, *,
                  dtype: str | None, vocabulary: Vocabulary | None) -> None:
        """Write ``tensors`` (the format's names, in ``dtype`` unless the format encodes them
        itself; each made as it is asked for, so write each before asking for the next) and
        ``config`` (the model config) into the new folder ``destination``, or the file
        ``destination`` for a format with a ``file_suffix`` (a format that keeps the tokenizer
        inside writes ``vocabulary`` there)."""
        raise NotImplementedError

    def read_vocabulary(self, path: Path) -> Vocabulary | None:
        """The checkpoint's tokenizer: by default the files in its folder."""
        return read_folder(path if path.is_dir() else path.parent)

    def tokenizer_losses(self, vocabulary: Vocabulary) -> list[str]:
        """What writing ``vocabulary`` in this format loses (nothing, by default)."""
        return []

    def keeps_tokenizer(self, vocabulary: Vocabulary) -> bool:
        """Whether the format keeps a tokenizer of ``vocabulary``'s kind (any, by default:
        transformers' files beside the weights, as they were read)."""
        return True

    def tokenizer_refusal(self, vocabulary: Vocabulary | None) -> str | None:
        """Why this format's file would not work with ``vocabulary`` (None: no tokenizer),
        where its target needs one that encodes as the source does; None where it is fine."""
        return None

    def runtime_logits(self, path: Path, ids: list[int]) -> np.ndarray:
        """The logits [T, V] the format's own ``runtime`` computes from the file, for formats
        that are programs as well as weights."""
        raise NotImplementedError

    def runtime_tolerance(self, path: Path) -> float | None:
        """The relative tolerance the runtime's arithmetic needs (None: fp32's)."""
        return None

    def reference_tensors(self, path: Path) -> tuple[dict[str, np.ndarray], dict]:
        """The checkpoint's own tensors renamed to GPT-2's Conv1D names (``h.0.attn.c_attn.weight``
        [in, out]) by code independent of the mapping table, and its model config: what the
        NumPy reference runs."""
        raise NotImplementedError

    @property
    def assumes(self) -> dict:
        return self.config_table.assumes

    def read(self, candidate: Candidate) -> Checkpoint:
        """The checkpoint at ``candidate``: tensors without optional prefixes, the validated
        model config, the head tied where the checkpoint has none or a copy of the embedding."""
        raw = self.read_raw(candidate)
        table = raw.name_table or self.name_table
        tensors = table.strip_prefix(raw.tensors)
        tied, tensors = _tying(table, tensors)
        config_table = raw.config_table or self.config_table
        config = config_table.to_model(
            raw.config, origin=raw.config_origin or raw.origin, hint=self.config_hint,
            extra={**raw.extra, **self._head_shape(table, tensors), "tie_output_head": tied})
        return Checkpoint(raw.origin, tensors, config, table, self, candidate.path,
                          raw.vocabulary)

    def _head_shape(self, table: MappingTable, tensors: dict[str, torch.Tensor]) -> dict:
        """The output head's config as the tensors give it, where the format can hold more than
        a language-model head: its rows (a classifier has fewer than the vocabulary) and whether
        it has a bias. Elsewhere a head that does not fit is a mapping error."""
        found = {}
        if self.holds_output_bias:
            found["output_bias"] = table.source_name("output_head.bias") in tensors
        head = table.rule_for("output_head.weight")
        if self.holds_classifier and head is not None and head.source[0] in tensors:
            weight = tensors[head.source[0]]
            if weight.dim() == 2:
                found["output_size"] = head.transform.to_model([weight])[0].shape[0]
        return found

    def table_for(self, config: dict) -> MappingTable:
        """The name table a model of ``config`` is written with."""
        return self.name_table

    def write(self, model, destination: Path, *, dtype: str | None,
              vocabulary: Vocabulary | None = None) -> None:
        """Write ``model`` (of a config ``held_config`` gives) to ``destination`` (a new folder,
        or a file for a format with a ``file_suffix``), with the tokenizer ``vocabulary``, where
        there is one."""
        config = model.config
        dtype = self.writing_dtype(dtype, model)
        if self.head == "separate":  # a tied head is written as its own tensor too
            config = {**config, "tie_output_head": False}
        state = dict(model.state_dict())
        if model.config["tie_output_head"] and self.head != "separate":
            del state["output_head.weight"]  # a tied head is stored once, as the embedding
        wanted = torch_dtype(dtype if self.converts_dtype else None, model)
        tensors = TensorStream(self.table_for(config), state, config, wanted)
        try:
            self.write_raw(Path(destination), tensors, config, dtype=dtype,
                           vocabulary=vocabulary)
        finally:
            tensors.release()
        if Path(destination).is_dir() and vocabulary is not None:
            self.write_tokenizer(vocabulary, Path(destination), config)

    def writing_dtype(self, dtype: str | None, model) -> str | None:
        """The --dtype to write (None: the model's own)."""
        return dtype

    def write_tokenizer(self, vocabulary: Vocabulary, folder: Path, config: dict) -> None:
        """Give ``folder`` the tokenizer as transformers' files (those it was read from, as they
        were, else written from ``vocabulary``)."""
        write_tokenizer_files(vocabulary, folder, config["context_length"])

    def held_config(self, config: dict) -> dict:
        """The model config as this format stores it: values it has no place for become the
        ones it assumes."""
        held = {**config, **self.assumes}
        if self.vocabulary == "rows":
            held["vocab_size"] = config["padded_vocab_size"]
        if self.head == "tied":
            held["tie_output_head"] = True
        if not self.holds_classifier:
            held["output_size"] = held["padded_vocab_size"]
        held["output_bias"] = config["output_bias"] and self.holds_output_bias
        if not self.holds_labels:
            held["output_labels"] = None
        if held["task"] not in self.tasks:
            held["task"] = ("language_model" if held["output_size"] == held["padded_vocab_size"]
                            else "text_classification")
            held["choice_outputs"], held["choice_activation"] = 0, None
        return held


def _tying(table: MappingTable, tensors: dict[str, torch.Tensor]
           ) -> tuple[bool, dict[str, torch.Tensor]]:
    """Whether the head is tied, and the tensors to map (without a head that is a copy)."""
    rule = table.rule_for("output_head.weight")
    if rule is None or rule.source[0] not in tensors:
        return True, tensors
    head = rule.source[0]
    embedding = tensors.get(table.source_name("token_embedding_table.weight"))
    # the head as the model holds it (TransformerLens's W_U is [D, V]): a view, no copy
    found = rule.transform.to_model([tensors[head]])[0] if tensors[head].dim() == 2 else None
    if embedding is None or found is None or found.shape != embedding.shape or not torch.equal(
            found, embedding):
        return False, tensors
    return True, {name: tensor for name, tensor in tensors.items() if name != head}


def _shown(value: object) -> str:
    return value if value == REQUIRED else f"`{json.dumps(value)}`"


def torch_dtype(dtype: str | None, model) -> torch.dtype:
    """A --dtype value (f32, f16, bf16) as a torch dtype; None: the model's own."""
    if dtype is None:
        return model.token_embedding_table.weight.dtype
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[dtype]


# --- what the NumPy reference reads with: the projects' own readers, each tensor when needed --


def torch_loaded(path: Path) -> object:
    """What a ``torch.save`` file holds, by ``torch.load`` itself (``weights_only``; memory-mapped
    where the file allows, so a tensor is read when used)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (not zip) file cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def later(tensor: torch.Tensor):
    """The tensor as a float32 array, made when called (``reference.Arrays``' makers)."""
    return lambda: tensor.float().numpy()


def safetensors_later(path: Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """Makers of each tensor of a safetensors file, read by the safetensors library when called
    (the file opened for that tensor alone), and the tensors' shapes."""
    from safetensors import safe_open  # the safetensors library, not our reader

    def read(name: str) -> np.ndarray:
        with safe_open(path, "pt") as file:
            return file.get_tensor(name).float().numpy()

    with safe_open(path, "pt") as file:
        shapes = {name: tuple(file.get_slice(name).get_shape()) for name in file.keys()}  # noqa: SIM118 - safe_open is not iterable
    return {name: (lambda name=name: read(name)) for name in shapes}, shapes
