"""Protocol Buffers' wire format, the little of it that TensorFlow's bundle index and ONNX's model
files need: varints, fields, and a message's fields as spans of its buffer (nothing copied)."""

from __future__ import annotations

import struct
from collections.abc import Iterator

LENGTH_DELIMITED = 2


def read_varint(buffer, position: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it.

    Raises:
        ValueError: for a varint that is truncated or longer than 64 bits.
    """
    value = shift = 0
    while True:
        if position >= len(buffer) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = buffer[position]
        value |= (byte & 0x7F) << shift
        position, shift = position + 1, shift + 7
        if byte < 0x80:
            return value, position


def fields(buffer, start: int = 0, end: int | None = None
           ) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value, end) of each field of the message in ``buffer[start:end]``:
    for a length-delimited field, value is where its bytes start and end where they stop; for
    the others the value itself.

    Raises:
        ValueError: for a field that runs past the message or an unknown wire type.
    """
    end = len(buffer) if end is None else end
    position = start
    while position < end:
        key, position = read_varint(buffer, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = read_varint(buffer, position)
            stop = position
        elif wire == 1:
            value, position = int.from_bytes(buffer[position:position + 8], "little"), position + 8
            stop = position
        elif wire == LENGTH_DELIMITED:
            length, value = read_varint(buffer, position)
            position = stop = value + length
        elif wire == 5:
            value, position = int.from_bytes(buffer[position:position + 4], "little"), position + 4
            stop = position
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if position > end:
            raise ValueError("truncated field")
        yield number, wire, value, stop


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def field(number: int, value: int | bytes, *, fixed32: bool = False) -> bytes:
    """One field: a varint, a fixed32 or (bytes) a length-delimited value."""
    if fixed32:
        return varint(number << 3 | 5) + struct.pack("<I", value)
    if isinstance(value, bytes):
        return varint(number << 3 | LENGTH_DELIMITED) + varint(len(value)) + value
    return varint(number << 3) + varint(value)


def header(number: int, length: int) -> bytes:
    """The key and length of a length-delimited field whose ``length`` bytes follow."""
    return varint(number << 3 | LENGTH_DELIMITED) + varint(length)
