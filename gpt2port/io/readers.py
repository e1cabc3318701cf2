"""Readers that turn checkpoint files into name -> tensor dicts, memory-mapped where possible."""

from __future__ import annotations

import json
import math
import mmap
import pickle
import struct
from pathlib import Path

import torch

from ..errors import CheckpointError, unreadable

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
_HEADER_LIMIT = 100 * 2**20  # the safetensors format caps its JSON header at 100 MB


def read_json(path: Path) -> dict:
    """A JSON object from ``path``.

    Raises:
        CheckpointError: when the file is missing, unreadable or not a JSON object.
    """
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (copy-on-write views of the memory-mapped file) and the metadata of one file.

    Raises:
        CheckpointError: naming the file and what is wrong with its header.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            size = file.seek(0, 2)
            file.seek(0)
            if size < 8:
                raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors file")
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > min(size - 8, _HEADER_LIMIT):
                raise CheckpointError(
                    f"{path}: header length {header_length} points past the end of the "
                    f"{size}-byte file", hint="the file is truncated or not safetensors")
            header = _parse_header(path, file.read(header_length))
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    except OSError as error:
        raise unreadable(path, error) from None
    metadata = header.pop("__metadata__", None) or {}
    data_start, data_size = 8 + header_length, size - 8 - header_length
    tensors = {name: _tensor_view(path, name, entry, mapped, data_start, data_size)
               for name, entry in header.items()}
    return tensors, metadata


def _parse_header(path: Path, raw: bytes) -> dict:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    return header


def _tensor_view(path: Path, name: str, entry: object, mapped: mmap.mmap | None,
                 data_start: int, data_size: int) -> torch.Tensor:
    problem = f"{path}: tensor {name!r}"
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CheckpointError(f"{problem}: header entry lacks dtype, shape or data_offsets")
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointError(f"{problem}: unsupported dtype {entry['dtype']!r}",
                              hint=f"supported: {', '.join(SAFETENSORS_DTYPES)}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        raise CheckpointError(f"{problem}: shape {shape!r} is not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointError(f"{problem}: data_offsets {offsets!r} are not [begin, end]")
    begin, end = offsets
    count = math.prod(shape)
    needed = count * dtype.itemsize
    if end - begin != needed:
        raise CheckpointError(f"{problem}: shape {shape} needs {needed} bytes, "
                              f"data_offsets give {end - begin}")
    if end > data_size:
        raise CheckpointError(f"{problem}: data ends at byte {end}, past the {data_size} bytes "
                              "of data in the file", hint="the file is truncated")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(mapped, dtype=torch.uint8, count=needed, offset=data_start + begin)
    if (data_start + begin) % dtype.itemsize:
        flat = flat.clone()  # misaligned data cannot be viewed as wider elements in place
    return flat.view(dtype).view(shape)


def load_pickle(path: Path) -> object:
    """What a ``torch.save`` file holds, unpickled with ``weights_only=True`` (no code runs;
    tensors memory-mapped).

    Raises:
        CheckpointError: when the file holds objects other than tensors and plain containers,
            or is damaged.
    """
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "zipfile" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"{path}: refused to unpickle: it holds objects other than tensors ({first_line})",
            hint="only load pickles from sources you trust; prefer a .safetensors file") from None
    except Exception as error:  # noqa: BLE001 - torch.load's parser raises many types on damaged files
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(error).__name__}: {first_line})",
                              hint="the file is truncated or damaged; download it again") from None
    return state


def read_pytorch_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict of name -> tensor.

    Raises:
        CheckpointError: when the file holds anything but tensors, or is not a state dict.
    """
    state = load_pickle(path)
    if not isinstance(state, dict) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor)
            for key, value in state.items()):
        raise CheckpointError(f"{path}: expected a dict of name -> tensor")
    return state


def read_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a sharded checkpoint, following its ``*.index.json`` weight map.

    Raises:
        CheckpointError: for a malformed index, a missing shard, or a tensor not where the
            index says.
    """
    index = read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path}: no 'weight_map' of tensor name -> shard file")
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if Path(shard).name != shard or not shard_path.is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} is missing next to the index")
        tensors.update(read_weights_file(shard_path))
    absent = sorted(name for name, shard in weight_map.items() if name not in tensors)
    if absent:
        raise CheckpointError(f"{index_path}: the index lists tensors its shards lack: "
                              + ", ".join(absent))
    return tensors


def read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of one ``.safetensors``, ``.bin`` or ``.pt`` file, or of a sharded index."""
    path = Path(path)
    if path.name.endswith(".index.json"):
        return read_sharded(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    if path.suffix in (".bin", ".pt", ".pth"):
        return read_pytorch_bin(path)
    raise CheckpointError(f"{path}: not a weights file this reader knows",
                          hint="expected .safetensors, .bin, .pt or a *.index.json")
