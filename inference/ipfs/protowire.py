"""The few protobuf wire-format primitives dag-pb and UnixFS need: varints and length-delimited fields.
Decoding is strict (bounds-checked, canonical varints) because every byte here came from the network."""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
LEN = 2


class ProtobufError(ValueError):
    """Bytes that are not the protobuf message they claim to be."""


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, next position). At most 9 bytes (63 bits); no trailing zero groups."""
    value = 0
    for i in range(9):
        if pos + i >= len(buf):
            raise ProtobufError("truncated varint")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise ProtobufError("non-canonical varint")
            return value, pos + i + 1
    raise ProtobufError("varint longer than 63 bits")


def key(field: int, wire_type: int) -> bytes:
    return encode_varint(field << 3 | wire_type)


def field_varint(field: int, value: int) -> bytes:
    return key(field, VARINT) + encode_varint(value)


def field_bytes(field: int, value: bytes) -> bytes:
    return key(field, LEN) + encode_varint(len(value)) + value


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value): an int for varints, a memoryview for length-delimited.
    Any other wire type is refused: neither dag-pb nor UnixFS uses one."""
    view = memoryview(buf)
    pos = 0
    while pos < len(view):
        tag, pos = decode_varint(view, pos)
        field, wire_type = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufError("field number 0")
        if wire_type == VARINT:
            value, pos = decode_varint(view, pos)
            yield field, wire_type, value
        elif wire_type == LEN:
            length, pos = decode_varint(view, pos)
            if pos + length > len(view):
                raise ProtobufError(f"field {field} claims {length} bytes, only {len(view) - pos} left")
            yield field, wire_type, view[pos : pos + length]
            pos += length
        else:
            raise ProtobufError(f"field {field} has unsupported wire type {wire_type}")
