"""Writers that put tensors into a file one at a time: safetensors and ``torch.save``'s archive.

Both lay out the file from the tensors' shapes and dtypes first, then write each tensor's bytes
as it is made, so a ``TensorStream`` is written holding about one tensor. Files the projects'
own readers take: ``safetensors.safe_open`` and transformers for the first, ``torch.load``
(with ``weights_only=True`` and ``mmap=True``) for the second.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from .readers import SAFETENSORS_DTYPES

SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes in row-major order, as a NumPy array to write (a copy only where the
    tensor is not contiguous)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def write_safetensors(path: Path, tensors, *, names: Mapping[str, str] | None = None,
                      metadata: dict[str, str] | None = None) -> None:
    """A safetensors file of a ``TensorStream``'s tensors, in its order, each stored under
    ``names[name]`` where given."""
    names, shapes, dtype = names or {}, tensors.shapes, tensors.dtype
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = metadata
    size = dtype.itemsize
    for name, shape in shapes.items():
        count = int(np.prod(shape, dtype=np.int64)) * size
        header[names.get(name, name)] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape),
                                         "data_offsets": [offset, offset + count]}
        offset += count
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for name, shape in shapes.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                                 f"the header says {dtype} {list(shape)}")
            file.write(tensor_bytes(tensor))


def placeholders(tensors) -> dict[str, torch.Tensor]:
    """An empty tensor of each of a ``TensorStream``'s shapes and its dtype, whose memory is
    never touched (the system gives a page only when it is written), to build what
    ``save_torch`` saves."""
    return {name: torch.empty(shape, dtype=tensors.dtype)
            for name, shape in tensors.shapes.items()}


def save_torch(path: Path, saved: object, tensors: Mapping[str, torch.Tensor],
               held: Mapping[str, torch.Tensor]) -> None:
    """``torch.save(saved, path)``, where ``saved`` holds ``held`` (``placeholders(tensors)``)
    in place of ``tensors``: the archive is laid out first (without data), then each tensor's
    bytes are written where ``torch.load`` reads them, ``tensors``' made one at a time."""
    with torch.serialization.skip_data():
        torch.save(saved, path)
    sources = {id(tensor): name for name, tensor in held.items()}
    with zipfile.ZipFile(path) as archive, open(path, "r+b") as file:
        records = {Path(info.filename).name: info for info in archive.infolist()
                   if Path(info.filename).parent.name == "data"}
        for key, tensor in enumerate(_storages_in_order(saved)):
            info = records[str(key)]
            data = tensor_bytes(tensors[sources[id(tensor)]] if id(tensor) in sources else tensor)
            if data.size != info.file_size:
                raise ValueError(f"storage {key}: {data.size} bytes for a {info.file_size}-byte "
                                 "record")
            _write_at(file.fileno(), memoryview(data), _data_offset(file, info))


def _storages_in_order(saved: object) -> list[torch.Tensor]:
    """One tensor per storage, in the order ``torch.save``'s pickler first meets them (the order
    of its record keys): dicts in insertion order, lists and tuples in order."""
    found, seen = [], set()

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storage = (storage.data_ptr(), storage.nbytes()) if storage.nbytes() else id(value)
            if storage not in seen:
                seen.add(storage)
                found.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(key)
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(saved)
    return found


def _write_at(descriptor: int, data: memoryview, offset: int) -> None:
    """All of ``data`` at ``offset`` (``pwrite`` may write less; the next call then raises,
    e.g. ENOSPC)."""
    while data:
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def _data_offset(file, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) record's bytes start: after its local header."""
    header = os.pread(file.fileno(), 30, info.header_offset)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length
