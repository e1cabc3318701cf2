"""TensorFlow's tensor bundle (the V2 checkpoint ``tf.train.Saver`` writes), read and written
without TensorFlow.

A checkpoint ``PREFIX`` is two files:

- ``PREFIX.index``: a LevelDB-style sorted table. Its data blocks hold prefix-compressed
  key/value entries; an index block points at them; a 48-byte footer points at the index block
  and ends with a magic number. Every block is followed by a type byte and a masked CRC-32C. The
  empty key holds a ``BundleHeaderProto``; every other key is a tensor name whose value is a
  ``BundleEntryProto``: dtype, shape, shard, offset, size and the masked CRC-32C of its bytes.
- ``PREFIX.data-00000-of-00001``: the tensors' raw little-endian bytes.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, unreadable
from .crc32c import crc32c, mask, unmask
from .protobuf import LENGTH_DELIMITED, fields
from .protobuf import field as _field
from .protobuf import read_varint as _read_varint
from .protobuf import varint as _varint
from .writers import tensor_bytes

MAGIC = 0xDB4775248B80FB57  # LevelDB's table magic number
FOOTER_BYTES = 48  # two block handles padded to 40 bytes, then the magic
TRAILER_BYTES = 5  # compression type + masked CRC-32C
RESTART_INTERVAL = 16  # entries between restart points, as TensorFlow's table builder
BLOCK_BYTES = 256 << 10  # TensorFlow's table block size
# TensorFlow DataType enum -> torch dtype
DTYPES = {
    1: torch.float32, 2: torch.float64, 3: torch.int32, 4: torch.uint8, 5: torch.int16,
    6: torch.int8, 9: torch.int64, 10: torch.bool, 14: torch.bfloat16, 19: torch.float16,
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


def data_path(prefix: Path, shard: int = 0, shards: int = 1) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}")


# --- protocol buffers: the few wire types the bundle's messages use ---------------------------

def _message_fields(buffer: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field: ints for varint/fixed, bytes for length-delimited."""
    for number, wire, value, stop in fields(buffer):
        yield number, (bytes(buffer[value:stop]) if wire == LENGTH_DELIMITED else value)


def _encode_entry(dtype: int, shape: tuple[int, ...], offset: int, size: int, crc: int) -> bytes:
    dims = b"".join(_field(2, _field(1, n) if n else b"") for n in shape)
    return (_field(1, dtype) + (_field(2, dims) if dims else b"") + _field(4, offset)
            + _field(5, size) + _field(6, mask(crc), fixed32=True))


HEADER = _field(1, 1) + _field(3, _field(1, 1))  # one shard, little-endian, producer version 1


# --- the sorted table of the index file -------------------------------------------------------

def _block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out, restarts, previous = bytearray(), [], b""
    for number, (key, value) in enumerate(entries):
        shared = 0
        if number % restart_interval:
            shared = len(os.path.commonprefix([previous, key]))
        else:
            restarts.append(len(out))
        out += _varint(shared) + _varint(len(key) - shared) + _varint(len(value))
        out += key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack(
        "<I", len(restarts))


def _with_trailer(contents: bytes) -> bytes:
    return contents + b"\0" + struct.pack("<I", mask(crc32c(contents + b"\0")))


def _handle(offset: int, size: int) -> bytes:
    return _varint(offset) + _varint(size)


def encode_table(entries: list[tuple[bytes, bytes]], block_bytes: int = BLOCK_BYTES) -> bytes:
    """A sorted table of ``entries`` (sorted by key), cut into data blocks of ~``block_bytes``."""
    out, index, pending, pending_size = bytearray(), [], [], 0

    def flush():
        nonlocal pending, pending_size
        contents = _block(pending, RESTART_INTERVAL)
        index.append((pending[-1][0], _handle(len(out), len(contents))))
        out.extend(_with_trailer(contents))
        pending, pending_size = [], 0

    for key, value in entries:
        pending.append((key, value))
        pending_size += len(key) + len(value) + 3
        if pending_size >= block_bytes:
            flush()
    if pending:
        flush()
    metaindex = _block([], RESTART_INTERVAL)
    metaindex_handle = _handle(len(out), len(metaindex))
    out += _with_trailer(metaindex)
    index_block = _block(index, 1)
    index_handle = _handle(len(out), len(index_block))
    out += _with_trailer(index_block)
    handles = metaindex_handle + index_handle
    return bytes(out) + handles + b"\0" * (40 - len(handles)) + struct.pack("<Q", MAGIC)


def _read_block(table: bytes, handle: bytes, what: str) -> bytes:
    offset, position = _read_varint(handle, 0)
    size, _ = _read_varint(handle, position)
    if offset + size + TRAILER_BYTES > len(table) - FOOTER_BYTES:
        raise ValueError(f"{what} at byte {offset} (+{size}) runs past the end")
    contents = table[offset:offset + size]
    kind, stored = table[offset + size], struct.unpack_from("<I", table, offset + size + 1)[0]
    if kind != 0:
        raise ValueError(f"{what} is compressed (type {kind}); only uncompressed tables are read")
    if crc32c(contents + b"\0") != unmask(stored):
        raise ValueError(f"{what} at byte {offset} fails its checksum")
    return contents


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ValueError("block too short")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise ValueError("block's restart count is larger than the block")
    position, key = 0, b""
    while position < end:
        shared, position = _read_varint(block, position)
        unshared, position = _read_varint(block, position)
        length, position = _read_varint(block, position)
        if shared > len(key) or position + unshared + length > end:
            raise ValueError("entry runs past its block")
        key = key[:shared] + block[position:position + unshared]
        position += unshared
        yield key, block[position:position + length]
        position += length


def decode_table(table: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a sorted table, in order.

    Raises:
        ValueError: for a table that is truncated, corrupted or not a LevelDB table.
    """
    if len(table) < FOOTER_BYTES or struct.unpack_from("<Q", table, len(table) - 8)[0] != MAGIC:
        raise ValueError("no LevelDB table magic number at the end")
    footer = table[-FOOTER_BYTES:]
    _, position = _read_varint(footer, _read_varint(footer, 0)[1])  # skip the metaindex handle
    index = _read_block(table, footer[position:], "index block")
    for _, handle in _block_entries(index):
        yield from _block_entries(_read_block(table, handle, "data block"))


# --- the bundle ----------------------------------------------------------------------------------

def write_bundle(prefix: Path, tensors: Mapping[str, torch.Tensor], *,
                 block_bytes: int = BLOCK_BYTES) -> list[Path]:
    """Write ``prefix.index`` and ``prefix.data-00000-of-00001``; returns both paths."""
    entries, offset = [], 0
    data = data_path(prefix)
    # each tensor's CRC computed on other threads while its bytes are written
    with open(data, "wb") as file, ThreadPoolExecutor(1) as checksums:
        for name in sorted(tensors, key=str.encode):
            tensor = tensors[name].detach().cpu()
            if tensor.dtype not in DTYPE_CODES:
                raise CheckpointError(f"tensor {name!r}: {tensor.dtype} has no TensorFlow dtype")
            raw = tensor_bytes(tensor)
            checksum = checksums.submit(crc32c, raw)
            file.write(raw)
            entries.append((name.encode(), _encode_entry(
                DTYPE_CODES[tensor.dtype], tuple(tensor.shape), offset, raw.size,
                checksum.result())))
            offset += raw.size
    index = Path(f"{prefix}.index")
    index.write_bytes(encode_table([(b"", HEADER), *entries], block_bytes))
    return [index, data]


def read_bundle(prefix: Path, *, check_crc: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of the checkpoint ``prefix`` (copy-on-write views of the memory-mapped data file),
    each checked against the CRC-32C its index entry stores.

    Raises:
        CheckpointError: naming the file, the tensor and what is wrong.
    """
    index_path = Path(f"{prefix}.index")
    try:
        table = index_path.read_bytes()
    except OSError as error:
        raise unreadable(index_path, error) from None
    try:
        records = dict(decode_table(table))
    except ValueError as error:
        raise CheckpointError(f"{index_path}: not a readable TensorFlow checkpoint index "
                              f"({error})", hint="the file is truncated or corrupted") from None
    shards = _read_header(index_path, records.pop(b"", None))
    data_files = [data_path(prefix, shard, shards) for shard in range(shards)]
    mapped = [_map(path) for path in data_files]
    tensors = {}
    for key, value in records.items():
        name = key.decode("utf-8", errors="replace")
        tensors[name] = _tensor(index_path, name, value, data_files, mapped, check_crc)
    return tensors


def _read_header(path: Path, raw: bytes | None) -> int:
    if raw is None:
        raise CheckpointError(f"{path}: the index has no bundle header (the empty key)")
    try:
        fields = dict(_message_fields(raw))
    except ValueError as error:
        raise CheckpointError(f"{path}: bundle header is malformed ({error})") from None
    if fields.get(2, 0) != 0:
        raise CheckpointError(f"{path}: the checkpoint is big-endian; only little-endian is read")
    shards = fields.get(1, 1)
    if not isinstance(shards, int) or not 1 <= shards <= 10_000:
        raise CheckpointError(f"{path}: bundle header gives {shards} shards")
    return shards


def _map(path: Path) -> mmap.mmap | bytes:
    try:
        with open(path, "rb") as file:
            if file.seek(0, 2) == 0:
                return b""
            return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint's data "
                              f"({error.strerror or error})",
                              hint="the .index and .data files must sit side by side") from None


def _tensor(path: Path, name: str, raw: bytes, data_files: list[Path], mapped: list,
            check_crc: bool) -> torch.Tensor:
    problem = f"{path}: tensor {name!r}"
    try:
        entry = dict(_message_fields(raw))
        shape_fields = list(_message_fields(entry.get(2, b"")))
        shape = [dict(_message_fields(dim)).get(1, 0) for number, dim in shape_fields
                 if number == 2]
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{problem}: entry is malformed ({error})") from None
    if 7 in entry:
        raise CheckpointError(f"{problem}: stored in slices (a partitioned variable)",
                              hint="only whole tensors are read")
    dtype = DTYPES.get(entry.get(1))
    if dtype is None:
        raise CheckpointError(f"{problem}: unsupported TensorFlow dtype {entry.get(1)}")
    shard, offset, size = entry.get(3, 0), entry.get(4, 0), entry.get(5, 0)
    if not all(isinstance(n, int) for n in (shard, offset, size, *shape)):
        raise CheckpointError(f"{problem}: entry is malformed (a size field is not an integer)")
    count = math.prod(shape)
    if size != count * dtype.itemsize:
        raise CheckpointError(f"{problem}: shape {shape} needs {count * dtype.itemsize} bytes, "
                              f"the entry gives {size}")
    if shard >= len(mapped):
        raise CheckpointError(f"{problem}: shard {shard}, but the header gives {len(mapped)}")
    data = mapped[shard]
    if offset + size > len(data):
        raise CheckpointError(
            f"{data_files[shard]}: tensor {name!r} ends at byte {offset + size}, past the "
            f"{len(data)}-byte file", hint="the data file is truncated; download it again")
    view = np.frombuffer(data, np.uint8, count=size, offset=offset) if size else (
        np.zeros(0, np.uint8))
    computed = crc32c(view) if check_crc and 6 in entry else None
    if computed is not None and computed != unmask(entry[6]):
        raise CheckpointError(
            f"{data_files[shard]}: tensor {name!r} fails its checksum (stored crc32c "
            f"{unmask(entry[6]):#010x}, computed {computed:#010x})",
            hint="the data file is corrupted; download it again (--force)")
    if not size:
        return torch.empty(shape, dtype=dtype)
    flat = torch.frombuffer(data, dtype=torch.uint8, count=size, offset=offset)
    if offset % dtype.itemsize:
        flat = flat.clone()
    return flat.view(dtype).view(shape)
