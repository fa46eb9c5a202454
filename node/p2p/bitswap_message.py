"""Bitswap 1.2.0 message (boxo `bitswap/message/pb/message.proto`), encoded by hand on the protobuf wire.

message Message {
  message Wantlist { enum WantType { Block = 0; Have = 1; }
    message Entry { bytes block = 1; int32 priority = 2; bool cancel = 3; WantType wantType = 4;
                    bool sendDontHave = 5; }
    repeated Entry entries = 1; bool full = 2; }
  message Block { bytes prefix = 1; bytes data = 2; }
  enum BlockPresenceType { Have = 0; DontHave = 1; }
  message BlockPresence { bytes cid = 1; BlockPresenceType type = 2; }
  Wantlist wantlist = 1; repeated bytes blocks = 2; repeated Block payload = 3;
  repeated BlockPresence blockPresences = 4; int32 pendingBytes = 5;
}
On a stream each message is preceded by its length as an unsigned varint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from node.p2p.errors import MessageTooLargeError

PROTOCOL_ID = "/ipfs/bitswap/1.2.0"


class WantType(IntEnum):
    BLOCK = 0
    HAVE = 1


class PresenceType(IntEnum):
    HAVE = 0
    DONT_HAVE = 1


@dataclass(frozen=True)
class WantEntry:
    cid: bytes  # binary CID
    priority: int = 1
    cancel: bool = False
    want_type: WantType = WantType.BLOCK
    send_dont_have: bool = False


@dataclass(frozen=True)
class PayloadBlock:
    prefix: bytes
    data: bytes


@dataclass(frozen=True)
class BlockPresence:
    cid: bytes
    type: PresenceType


@dataclass
class BitswapMessage:
    wantlist: list[WantEntry] = field(default_factory=list)
    full_wantlist: bool = False
    payload: list[PayloadBlock] = field(default_factory=list)
    presences: list[BlockPresence] = field(default_factory=list)
    pending_bytes: int = 0
    # bitswap 1.0.0 blocks (CIDv0 implied); accepted on read, never written
    legacy_blocks: list[bytes] = field(default_factory=list)

    def encode(self) -> bytes:
        out = bytearray()
        if self.wantlist or self.full_wantlist:
            wl = bytearray()
            for entry in self.wantlist:
                wl += _len_field(1, _encode_entry(entry))
            if self.full_wantlist:
                wl += _varint_field(2, 1)
            out += _len_field(1, bytes(wl))
        for block in self.payload:
            out += _len_field(3, _len_field(1, block.prefix) + _len_field(2, block.data))
        for presence in self.presences:
            body = _len_field(1, presence.cid)
            if presence.type:
                body += _varint_field(2, int(presence.type))
            out += _len_field(4, body)
        if self.pending_bytes:
            out += _varint_field(5, self.pending_bytes)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> BitswapMessage:
        msg = cls()
        for num, value in _fields(data):
            if num == 1 and isinstance(value, bytes):
                for wnum, wvalue in _fields(value):
                    if wnum == 1 and isinstance(wvalue, bytes):
                        msg.wantlist.append(_decode_entry(wvalue))
                    elif wnum == 2:
                        msg.full_wantlist = bool(wvalue)
            elif num == 2 and isinstance(value, bytes):
                msg.legacy_blocks.append(value)
            elif num == 3 and isinstance(value, bytes):
                parts = dict(_fields(value))
                msg.payload.append(PayloadBlock(prefix=_as_bytes(parts.get(1)), data=_as_bytes(parts.get(2))))
            elif num == 4 and isinstance(value, bytes):
                parts = dict(_fields(value))
                kind = PresenceType(_as_int(parts.get(2)))
                msg.presences.append(BlockPresence(cid=_as_bytes(parts.get(1)), type=kind))
            elif num == 5:
                msg.pending_bytes = _as_int(value)
        return msg


def frame(message: BitswapMessage) -> bytes:
    body = message.encode()
    return encode_uvarint(len(body)) + body


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint cannot encode a negative number")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes | memoryview, pos: int = 0) -> tuple[int, int]:
    """Return (value, position after the varint)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in bitswap message")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits in bitswap message")


def check_frame_length(length: int, limit: int) -> None:
    if length > limit:
        raise MessageTooLargeError(f"bitswap message of {length} bytes exceeds the {limit}-byte limit")


def _encode_entry(entry: WantEntry) -> bytes:
    body = _len_field(1, entry.cid)
    if entry.priority:
        body += _varint_field(2, entry.priority & 0xFFFFFFFFFFFFFFFF)
    if entry.cancel:
        body += _varint_field(3, 1)
    if entry.want_type:
        body += _varint_field(4, int(entry.want_type))
    if entry.send_dont_have:
        body += _varint_field(5, 1)
    return body


def _decode_entry(data: bytes) -> WantEntry:
    parts = dict(_fields(data))
    priority = _as_int(parts.get(2))
    if priority >= 1 << 63:  # int32 negatives are sign-extended to 64 bits on the wire
        priority -= 1 << 64
    return WantEntry(
        cid=_as_bytes(parts.get(1)),
        priority=priority,
        cancel=bool(_as_int(parts.get(3))),
        want_type=WantType(_as_int(parts.get(4))),
        send_dont_have=bool(_as_int(parts.get(5))),
    )


def _tag(num: int, wire_type: int) -> bytes:
    return encode_uvarint(num << 3 | wire_type)


def _varint_field(num: int, value: int) -> bytes:
    return _tag(num, 0) + encode_uvarint(value)


def _len_field(num: int, value: bytes) -> bytes:
    return _tag(num, 2) + encode_uvarint(len(value)) + value


def _fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """Split a protobuf message into (field number, value); skips fixed32/64 fields it does not know."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = decode_uvarint(data, pos)
        num, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = decode_uvarint(data, pos)
            out.append((num, value))
        elif wire_type == 2:
            length, pos = decode_uvarint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field in bitswap message")
            out.append((num, bytes(data[pos : pos + length])))
            pos += length
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in bitswap message")
    if pos != len(data):
        raise ValueError("truncated fixed-width field in bitswap message")
    return out


def _as_bytes(value: int | bytes | None) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, bytes):
        raise ValueError("expected a bytes field in bitswap message")
    return value


def _as_int(value: int | bytes | None) -> int:
    if value is None:
        return 0
    if not isinstance(value, int):
        raise ValueError("expected a varint field in bitswap message")
    return value
