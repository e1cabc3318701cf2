"""Flax's ``flax_model.msgpack`` read without JAX or the msgpack package: a nested map of
parameters whose leaves are msgpack ext values of type 1 (flax.serialization's ndarray:
``[shape, dtype name, raw bytes]``). The file is memory-mapped and each array is a view of
its bytes; nothing is copied.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import torch

from ..errors import CheckpointError, unreadable

NDARRAY = 1  # flax.serialization's ext type of a numpy array
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64, "int32": torch.int32, "int64": torch.int64}
DEPTH = 32  # how deep maps may nest: Flax's parameter trees are 5 deep


class _Malformed(Exception):
    """The bytes are not the msgpack a Flax file holds (internal; said as CheckpointError)."""


class _Reader:
    """msgpack values from ``buffer``; ext payloads come back as (type, start, length)."""

    def __init__(self, buffer):
        self.buffer, self.position = buffer, 0

    def take(self, count: int) -> int:
        start = self.position
        if count < 0 or start + count > len(self.buffer):
            raise _Malformed(f"a value runs past the end of the file (byte {start})")
        self.position += count
        return start

    def number(self, form: str) -> int | float:
        size = struct.calcsize(form)
        return struct.unpack_from(form, self.buffer, self.take(size))[0]

    def text(self, length: int) -> str:
        start = self.take(length)
        try:
            return bytes(self.buffer[start:start + length]).decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"a name at byte {start} is not UTF-8") from None

    def value(self, depth: int = 0):
        if depth > DEPTH:
            raise _Malformed(f"maps nested more than {DEPTH} deep")
        tag = self.buffer[self.take(1)]
        if tag <= 0x7F:
            return tag
        if tag >= 0xE0:
            return tag - 0x100
        if 0x80 <= tag <= 0x8F:
            return self.map(tag & 0x0F, depth)
        if 0x90 <= tag <= 0x9F:
            return [self.value(depth + 1) for _ in range(tag & 0x0F)]
        if 0xA0 <= tag <= 0xBF:
            return self.text(tag & 0x1F)
        fixed = {0xC0: None, 0xC2: False, 0xC3: True}
        if tag in fixed:
            return fixed[tag]
        numbers = {0xCA: ">f", 0xCB: ">d", 0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q",
                   0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if tag in numbers:
            return self.number(numbers[tag])
        lengths = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}
        if tag in lengths:
            return self.text(self.number(lengths[tag]))
        binaries = {0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}
        if tag in binaries:
            length = self.number(binaries[tag])
            return ("bin", self.take(length), length)
        containers = {0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
        if tag in containers:
            count = self.number(containers[tag])
            if tag >= 0xDE:
                return self.map(count, depth)
            return [self.value(depth + 1) for _ in range(count)]
        fixext = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
        extended = {0xC7: ">B", 0xC8: ">H", 0xC9: ">I"}
        if tag in fixext or tag in extended:
            length = fixext[tag] if tag in fixext else self.number(extended[tag])
            kind = self.number(">b")
            return ("ext", kind, self.take(length), length)
        raise _Malformed(f"byte {self.position - 1} holds 0x{tag:02x}, not a msgpack value")

    def map(self, count: int, depth: int) -> dict:
        found = {}
        for _ in range(count):
            key = self.value(depth + 1)
            if not isinstance(key, str):
                raise _Malformed(f"a map key before byte {self.position} is not a name")
            found[key] = self.value(depth + 1)
        return found


def read_flax_msgpack(path: Path) -> dict[str, torch.Tensor]:
    """Every array of a Flax msgpack file under its dotted path (``transformer.h.0.attn.c_attn
    .kernel``), as views of the memory-mapped file.

    Raises:
        CheckpointError: naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        with open(path, "rb") as file:
            if file.seek(0, 2) == 0:
                raise CheckpointError(f"{path}: the file is empty")
            mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as error:
        raise unreadable(path, error) from None
    try:
        reader = _Reader(mapped)
        tree = reader.value()
        if reader.position != len(mapped):
            raise _Malformed(f"{len(mapped) - reader.position} bytes follow the parameters")
        if not isinstance(tree, dict):
            raise _Malformed("it holds no map of parameters")
        tensors = {}
        _leaves(tree, "", mapped, tensors)
    except _Malformed as error:
        raise CheckpointError(f"{path}: not a Flax msgpack file: {error}",
                              hint="the file is damaged or truncated: download it again") from None
    return tensors


def _leaves(tree: dict, prefix: str, mapped: mmap.mmap, tensors: dict) -> None:
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            _leaves(value, f"{name}.", mapped, tensors)
        elif isinstance(value, tuple) and value[0] == "ext" and value[1] == NDARRAY:
            tensors[name] = _array(name, mapped, value[2], value[3])
        else:
            raise _Malformed(f"{name} is not an array")


def _array(name: str, mapped: mmap.mmap, start: int, length: int) -> torch.Tensor:
    """The ndarray ext payload at ``start``: [shape, dtype, bytes] -> a view of its bytes."""
    inner = _Reader(memoryview(mapped)[start:start + length])
    found = inner.value(DEPTH - 2)
    if (not isinstance(found, list) or len(found) != 3 or not isinstance(found[0], list)
            or not all(isinstance(size, int) and size >= 0 for size in found[0])
            or not isinstance(found[2], tuple) or found[2][0] != "bin"):
        raise _Malformed(f"{name}: its array is not [shape, dtype, bytes]")
    shape, dtype_name, (_, offset, size) = found
    dtype = DTYPES.get(dtype_name)
    if dtype is None:
        raise _Malformed(f"{name}: dtype {dtype_name!r} is not one gpt2port reads")
    count = 1
    for each in shape:
        count *= each
    if count * dtype.itemsize != size:
        raise _Malformed(f"{name}: shape {shape} of {dtype_name} needs {count * dtype.itemsize} "
                         f"bytes, the array has {size}")
    if count == 0:
        return torch.empty(shape, dtype=dtype)
    at = start + offset
    flat = torch.frombuffer(mapped, dtype=torch.uint8, count=size, offset=at)
    if at % dtype.itemsize:
        flat = flat.clone()  # misaligned data cannot be viewed as wider elements in place
    return flat.view(dtype).view(shape)
