"""A GGUF file read from its specification (ggml's docs/gguf.md) with NumPy alone, for the
reference: it shares no code with the gguf package the loader reads through.

Layout: ``GGUF``, version (uint32), tensor count and metadata count (uint64); the metadata as
key (uint64 length + UTF-8), value type (uint32), value; each tensor's name, dimension count,
dimensions (fastest-varying first), ggml type and offset; padding to ``general.alignment``
(default 32); the tensor data. F32, F16, BF16 and Q8_0 (blocks of 32: an f16 scale and 32 int8)
are decoded here; other types through the gguf package, and ``read`` says so.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
           10: "<u8", 11: "<i8", 12: "<f8"}  # metadata value type -> NumPy type
STRING, ARRAY = 8, 9
F32, F16, Q8_0, BF16 = 0, 1, 8, 30
BLOCK = 32  # values per Q8_0 block


class Reader:
    """A cursor over the file's bytes."""

    def __init__(self, data: memoryview, path: Path):
        self.data, self.at, self.path = data, 0, path

    def take(self, size: int) -> memoryview:
        if size < 0 or self.at + size > len(self.data):
            raise CheckpointError(f"{self.path}: the GGUF header runs past the end of the file")
        found = self.data[self.at:self.at + size]
        self.at += size
        return found

    def scalar(self, kind: str):
        return np.frombuffer(self.take(np.dtype(kind).itemsize), kind)[0].item()

    def string(self) -> str:
        return bytes(self.take(self.scalar("<u8"))).decode("utf-8", errors="replace")

    def value(self, kind: int):
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            inner, count = self.scalar("<u4"), self.scalar("<u8")
            return [self.value(inner) for _ in range(count)]
        if kind not in SCALARS:
            raise CheckpointError(f"{self.path}: unknown GGUF metadata type {kind}")
        return self.scalar(SCALARS[kind])


def read(path: Path) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """The metadata, a maker of every tensor as float32 in NumPy's order (the reverse of GGUF's
    dimensions), each decoded when called (quantized types this reader does not decode, through
    the gguf package), and every tensor's shape.

    Raises:
        CheckpointError: for a file that is not GGUF or whose header does not fit it.
    """
    data = memoryview(np.memmap(path, dtype=np.uint8, mode="r"))
    cursor = Reader(data, path)
    if bytes(cursor.take(4)) != b"GGUF":
        raise CheckpointError(f"{path}: not a GGUF file")
    version, tensors, entries = cursor.scalar("<u4"), cursor.scalar("<u8"), cursor.scalar("<u8")
    if version not in (2, 3):
        raise CheckpointError(f"{path}: GGUF version {version}, not 2 or 3")
    metadata = {}
    for _ in range(entries):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.scalar("<u4"))
    infos = []
    for _ in range(tensors):
        name = cursor.string()
        dimensions = [cursor.scalar("<u8") for _ in range(cursor.scalar("<u4"))]
        infos.append((name, tuple(reversed(dimensions)), cursor.scalar("<u4"),
                      cursor.scalar("<u8")))
    alignment = metadata.get("general.alignment", 32)
    start = -(-cursor.at // alignment) * alignment
    arrays = {}
    for name, shape, kind, offset in infos:
        count = int(np.prod(shape))
        at = start + offset
        size = count * {F32: 4, F16: 2, BF16: 2}.get(kind, 0) or count // BLOCK * 34
        if kind in (F32, F16, BF16, Q8_0) and at + size > len(data):
            raise CheckpointError(f"{path}: tensor {name!r} runs past the end of the file")
        if kind in (F32, F16, BF16, Q8_0):
            arrays[name] = partial(_decoded, data, kind, at, count, shape)
        else:
            arrays[name] = partial(_through_package, path, name)
    return metadata, arrays, {name: shape for name, shape, _, _ in infos}


def _decoded(data: memoryview, kind: int, at: int, count: int, shape: tuple[int, ...]
             ) -> np.ndarray:
    """One tensor of a type this reader decodes, as float32 (a view of the file for F32)."""
    if kind in (F32, F16, BF16):
        width = 4 if kind == F32 else 2
        raw = np.frombuffer(data[at:at + count * width], "<f4" if kind == F32 else "<u2")
        if kind == F16:
            raw = raw.view("<f2")
        elif kind == BF16:  # the top 16 bits of a float32
            raw = (raw.astype("<u4") << 16).view("<f4")
        return raw.astype(np.float32, copy=False).reshape(shape)
    blocks = np.frombuffer(data[at:at + count // BLOCK * 34], np.uint8).reshape(-1, 34)
    scales = blocks[:, :2].copy().view("<f2").astype(np.float32)
    values = blocks[:, 2:].view(np.int8).astype(np.float32)
    return (values * scales).reshape(shape)


def _through_package(path: Path, name: str) -> np.ndarray:
    """A tensor of a quantized type this reader does not decode, dequantized by the gguf
    package."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensor = next(each for each in reader.tensors if each.name == name)
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), np.float32)
