"""CRC-32C (Castagnoli), the checksum of TensorFlow's checkpoints and LevelDB tables, in NumPy.

A byte-at-a-time CRC in Python runs at a few MB/s, so the data is cut into equal chunks whose CRCs
are computed side by side (four bytes per step, vectorised over the chunks) and then combined
pairwise: appending ``n`` zero bytes to a CRC is a linear map over GF(2), a 32 x 32 bit matrix.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reflected
CHUNK_BYTES = 256  # bytes per lane
BLOCK_BYTES = 4 << 20  # bytes processed per vectorised pass (keeps temporaries small)
MASK_DELTA = 0xA282EAD8


def _byte_tables() -> np.ndarray:
    """Slicing-by-4 tables: ``[k][b]`` is the CRC of byte ``b`` followed by ``k`` zero bytes."""
    tables = np.zeros((4, 256), np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (POLYNOMIAL if crc & 1 else 0)
        tables[0, byte] = crc
    for k in range(1, 4):
        tables[k] = (tables[k - 1] >> 8) ^ tables[0][tables[k - 1] & 0xFF]
    return tables


TABLES = _byte_tables()
_values = np.arange(1 << 16, dtype=np.uint32)
# Two-byte tables: the low and the high half of a 4-byte step, each one lookup.
LOW_HALF = TABLES[3][_values & 0xFF] ^ TABLES[2][_values >> 8]
HIGH_HALF = TABLES[1][_values & 0xFF] ^ TABLES[0][_values >> 8]


def _apply(matrix: tuple[int, ...], vector: int) -> int:
    """Matrix (32 columns) times a 32-bit vector over GF(2)."""
    result = 0
    for bit in range(32):
        if vector >> bit & 1:
            result ^= matrix[bit]
    return result


def _apply_many(matrix: tuple[int, ...], vectors: np.ndarray) -> np.ndarray:
    result = np.zeros_like(vectors)
    for bit in range(32):
        result ^= ((vectors >> np.uint32(bit)) & np.uint32(1)) * np.uint32(matrix[bit])
    return result


@lru_cache(maxsize=64)
def _zeros_operator(length: int) -> tuple[int, ...]:
    """The matrix that appends ``length`` zero bytes to a (raw) CRC register."""
    if length == 1:
        return tuple(int(TABLES[0][(1 << bit) & 0xFF]) ^ ((1 << bit) >> 8) for bit in range(32))
    half = _zeros_operator(length // 2)
    result = tuple(_apply(half, column) for column in half)
    if length % 2:
        one = _zeros_operator(1)
        result = tuple(_apply(one, column) for column in result)
    return result


def _shift(crc: int, length: int) -> int:
    return _apply(_zeros_operator(length), crc) if length else crc


def _raw_block(data: np.ndarray) -> int:
    """The CRC register after ``data`` from state 0 (no initial or final inversion)."""
    lanes = -(-data.size // CHUNK_BYTES)
    padding = lanes * CHUNK_BYTES - data.size
    if padding:  # leading zeros leave a zero register unchanged
        data = np.concatenate([np.zeros(padding, np.uint8), data])
    words = data.view("<u4").reshape(lanes, CHUNK_BYTES // 4)
    crcs = np.zeros(lanes, np.uint32)
    for column in range(words.shape[1]):
        x = crcs ^ words[:, column]
        crcs = LOW_HALF[x & 0xFFFF] ^ HIGH_HALF[x >> 16]
    span = CHUNK_BYTES
    while crcs.size > 1:
        if crcs.size % 2:
            crcs = np.concatenate([np.zeros(1, np.uint32), crcs])
        crcs = _apply_many(_zeros_operator(span), crcs[0::2]) ^ crcs[1::2]
        span *= 2
    return int(crcs[0])


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, crc: int = 0) -> int:
    """The CRC-32C of ``data``, continuing from ``crc`` (the CRC of what came before). Blocks
    are computed on a thread per core (NumPy releases the GIL), then combined in order."""
    data = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else (
        data.reshape(-1).view(np.uint8))
    blocks = [data[start:start + BLOCK_BYTES] for start in range(0, data.size, BLOCK_BYTES)]
    if len(blocks) > 1:
        with ThreadPoolExecutor(min(len(blocks), os.cpu_count() or 1)) as pool:
            raws = list(pool.map(_raw_block, blocks))
    else:
        raws = [_raw_block(block) for block in blocks]
    register = crc ^ 0xFFFFFFFF
    for block, raw in zip(blocks, raws, strict=True):
        register = _shift(register, block.size) ^ raw
    return register ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """LevelDB's masked CRC, stored so that a CRC of data holding CRCs stays well distributed."""
    return (((crc >> 15) | (crc << 17)) + MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rotated = (masked - MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
