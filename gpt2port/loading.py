"""``load_pretrained``: a preset, Hub repo id, folder or file -> a ready ``GPTModel``."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import PRESETS, hub_source
from .errors import CheckpointError, ConfigError, NetworkError
from .formats import huggingface
from .formats.table import to_model
from .model import GPTModel
from .readers import read_json, read_weights_file

REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
COMMIT = re.compile(r"[0-9a-f]{40}")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass
class Checkpoint:
    """A checkpoint's tensors under their own names, and the model config it implies."""

    origin: str
    tensors: dict[str, torch.Tensor]
    config: dict


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.float16``, ``"fp16"``, ``"bfloat16"``... -> a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def find_weights(folder: Path) -> Path:
    """The weights file a Hugging Face folder holds.

    Raises:
        CheckpointError: listing what the folder has instead.
    """
    for name in huggingface.WEIGHTS_FILES:
        if (folder / name).is_file():
            return folder / name
    present = ", ".join(sorted(path.name for path in folder.iterdir())) or "nothing"
    raise CheckpointError(f"{folder}: no weights file "
                          f"({', '.join(huggingface.WEIGHTS_FILES)}); the folder has {present}")


def open_checkpoint(path: Path) -> Checkpoint:
    """Read a Hugging Face folder, or one weights file with ``config.json`` beside it."""
    path = Path(path)
    weights = find_weights(path) if path.is_dir() else path
    config_path = weights.parent / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{weights}: no config.json beside it",
                              hint="put the model's config.json in the same folder")
    config = huggingface.config_to_model(read_json(config_path), origin=str(config_path))
    tensors = huggingface.TABLE.strip_prefix(read_weights_file(weights))
    return Checkpoint(str(weights), tensors, config)


def _decide_tying(checkpoint: Checkpoint) -> dict:
    """Tie the output head when the checkpoint has none, or one equal to the embedding."""
    table, tensors = huggingface.TABLE, checkpoint.tensors
    head = table.source_name("output_head.weight")
    embedding = tensors.get(table.source_name("token_embedding_table.weight"))
    if head not in tensors:
        return {**checkpoint.config, "tie_output_head": True}
    same = (embedding is not None and tensors[head].shape == embedding.shape
            and torch.equal(tensors[head], embedding))
    if same:
        del tensors[head]
    return {**checkpoint.config, "tie_output_head": same}


@contextmanager
def _without_initialisation() -> Iterator[None]:
    """Skip the random init of linear and embedding layers: every weight is assigned after.

    (On the meta device ``normal_`` alone costs 1.3 s the first time, importing torch's Python
    meta kernels.)
    """
    saved = {layer: layer.reset_parameters for layer in (nn.Linear, nn.Embedding)}
    try:
        for layer in saved:
            layer.reset_parameters = lambda self: None
        yield
    finally:
        for layer, method in saved.items():
            layer.reset_parameters = method


def empty_model(config: dict) -> GPTModel:
    """The model's structure on the meta device: shapes only, no memory, no initialisation."""
    with torch.device("meta"), _without_initialisation():
        return GPTModel(config)


def model_from_checkpoint(checkpoint: Checkpoint, *, dtype: torch.dtype | str | None = None,
                          device: torch.device | str = "cpu") -> GPTModel:
    """Build the model on the meta device and assign the checkpoint's tensors to it.

    ``dtype=None`` keeps the checkpoint's own floating-point type.

    Raises:
        MappingError: listing every tensor that does not fit.
    """
    config = _decide_tying(checkpoint)
    model = empty_model(config)
    expected = model.state_dict()
    if config["tie_output_head"]:
        del expected["output_head.weight"]
    state = to_model(huggingface.TABLE, checkpoint.tensors, expected, model.config,
                     origin=checkpoint.origin)
    dtype = parse_dtype(dtype) or state["token_embedding_table.weight"].dtype
    state = {name: tensor.to(device=device, dtype=dtype) for name, tensor in state.items()}
    if config["tie_output_head"]:
        state["output_head.weight"] = state["token_embedding_table.weight"]
    model.load_state_dict(state, assign=True)
    model.tie_output_head()
    return model.eval()


def resolve(name_or_path: str | Path, *, revision: str | None = None,
            cache_dir: str | Path | None = None, offline: bool = False) -> Path:
    """A local path as is; a preset or Hub repo id -> its snapshot folder in the Hub cache.

    A preset pinned to a commit that is already cached resolves with no network request.
    """
    path = Path(name_or_path)
    if path.exists():
        return path
    name = str(name_or_path)
    if name not in PRESETS and not REPO_ID.fullmatch(name):
        raise CheckpointError(f"{name}: no such file or folder, and not a preset or Hub repo id",
                              hint=f"presets: {', '.join(PRESETS)}")
    from . import hub  # imported here: a local load needs no network stack

    source = hub_source(name, revision)
    if source.revision and COMMIT.fullmatch(source.revision):
        cached = hub.cached_snapshot(source.repo_id, revision=source.revision,
                                     cache_dir=cache_dir)
        if cached is not None:
            return cached
    try:
        return hub.download(source.repo_id, revision=source.revision, cache_dir=cache_dir,
                            pinned=source.pinned, offline=offline)
    except NetworkError:
        cached = hub.cached_snapshot(source.repo_id, revision=source.revision,
                                     cache_dir=cache_dir)
        if cached is None:
            raise
        return cached


def load_pretrained(name_or_path: str | Path, *, revision: str | None = None,
                    dtype: torch.dtype | str | None = None, device: torch.device | str = "cpu",
                    cache_dir: str | Path | None = None) -> GPTModel:
    """GPT-2 weights from a preset (``"gpt2"``), a Hub repo id, a folder or a file, in eval mode.

    Raises:
        CheckpointError: for files that are missing, malformed or do not fit the model.
        ConfigError: for a config.json this model cannot implement.
        DownloadError: when the Hub cannot be reached or refuses.
    """
    folder = resolve(name_or_path, revision=revision, cache_dir=cache_dir)
    return model_from_checkpoint(open_checkpoint(folder), dtype=dtype, device=device)
