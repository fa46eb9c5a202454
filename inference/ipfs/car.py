"""CARv1 (content-addressed archive): write, and an incremental reader that verifies every block against
its CID as soon as the block is complete, so a lying stream is refused at the first bad block.

    varint(len(header)) | DAG-CBOR {"roots": [CID, ...], "version": 1}
    then for each block: varint(len(cid) + len(data)) | cid bytes | data
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .cid import InvalidCidError, ParsedCid, parse_cid
from .protowire import ProtobufError, decode_varint, encode_varint

MAX_HEADER = 4096
CID_TAG = 42


class CarError(ValueError):
    """A CAR stream that is malformed, truncated, oversized or holds a block that fails its CID."""

    def __init__(self, message: str, *, reason: str = "bad-car") -> None:
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------------ the DAG-CBOR header (tiny subset)


def _cbor_head(major: int, value: int) -> bytes:
    if value < 24:
        return bytes([major << 5 | value])
    for extra, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if value < 1 << (8 * width):
            return bytes([major << 5 | extra]) + value.to_bytes(width, "big")
    raise ValueError("CBOR value too large")


def encode_header(roots: Sequence[str | ParsedCid]) -> bytes:
    out = _cbor_head(5, 2) + _cbor_head(3, 5) + b"roots" + _cbor_head(4, len(roots))
    for root in roots:
        raw = b"\x00" + parse_cid(root).to_bytes()  # DAG-CBOR links are tag 42 over 0x00 + binary CID
        out += _cbor_head(6, CID_TAG) + _cbor_head(2, len(raw)) + raw
    return out + _cbor_head(3, 7) + b"version" + _cbor_head(0, 1)


def _decode_cbor(buf: bytes, pos: int, depth: int = 0) -> tuple[object, int]:
    if depth > 4:
        raise CarError("CAR header nests too deep")
    if pos >= len(buf):
        raise CarError("truncated CAR header")
    major, info = buf[pos] >> 5, buf[pos] & 31
    pos += 1
    if info < 24:
        value = info
    elif info <= 27:
        width = 1 << (info - 24)
        if pos + width > len(buf):
            raise CarError("truncated CAR header")
        value, pos = int.from_bytes(buf[pos : pos + width], "big"), pos + width
    else:
        raise CarError("CAR header uses indefinite-length or reserved CBOR")
    if major == 0:
        return value, pos
    if major in (2, 3):
        if pos + value > len(buf):
            raise CarError("truncated CAR header")
        chunk = buf[pos : pos + value]
        return (chunk if major == 2 else chunk.decode("utf-8", "strict")), pos + value
    if major == 4:
        items = []
        for _ in range(value):
            item, pos = _decode_cbor(buf, pos, depth + 1)
            items.append(item)
        return items, pos
    if major == 5:
        result: dict[object, object] = {}
        for _ in range(value):
            k, pos = _decode_cbor(buf, pos, depth + 1)
            v, pos = _decode_cbor(buf, pos, depth + 1)
            result[k] = v
        return result, pos
    if major == 6 and value == CID_TAG:
        raw, pos = _decode_cbor(buf, pos, depth + 1)
        if not isinstance(raw, bytes) or not raw.startswith(b"\x00"):
            raise CarError("CAR header root is not a CID link")
        try:
            return parse_cid(raw[1:]), pos
        except InvalidCidError as exc:
            raise CarError(f"CAR header root: {exc}") from exc
    raise CarError(f"CAR header uses unsupported CBOR major type {major}")


def decode_header(buf: bytes) -> list[ParsedCid]:
    header, end = _decode_cbor(buf, 0)
    if end != len(buf) or not isinstance(header, dict):
        raise CarError("CAR header is not a single CBOR map")
    if header.get("version") != 1:
        raise CarError(f"unsupported CAR version {header.get('version')!r} (only CARv1)")
    roots = header.get("roots")
    if not isinstance(roots, list) or not all(isinstance(r, ParsedCid) for r in roots):
        raise CarError("CAR header roots must be a list of CIDs")
    return roots  # type: ignore[return-value]


# -------------------------------------------------------------------------------------------- writing


def write_car(
    roots: Sequence[str | ParsedCid], blocks: Iterable[tuple[str | ParsedCid, bytes]]
) -> Iterator[bytes]:
    """Yield a CARv1 piece by piece (header, then one piece per block) for streaming."""
    header = encode_header(roots)
    yield encode_varint(len(header)) + header
    for cid, data in blocks:
        raw = parse_cid(cid).to_bytes()
        yield encode_varint(len(raw) + len(data)) + raw + data


def car_bytes(roots: Sequence[str | ParsedCid], blocks: Iterable[tuple[str | ParsedCid, bytes]]) -> bytes:
    return b"".join(write_car(roots, blocks))


# -------------------------------------------------------------------------------------------- reading


def _cid_length(section: bytes | memoryview) -> int:
    if len(section) >= 2 and section[0] == 0x12 and section[1] == 0x20:
        return 34  # CIDv0: a bare sha2-256 multihash
    pos = 0
    for _ in range(3):  # version, codec, hash function
        _, pos = decode_varint(section, pos)
    length, pos = decode_varint(section, pos)
    return pos + length


class CarReader:
    """Feed bytes as they arrive; get back (cid, block) pairs, each already verified against its CID.

    max_block_size bounds any one section before it is buffered, max_total bounds the sum of block bytes:
    both are enforced while streaming, so an oversize stream is cut off at the first excess byte."""

    def __init__(self, *, max_block_size: int, max_total: int, verify: bool = True) -> None:
        """verify=False leaves the hashing to the caller (who must then check every block before use)."""
        self.verify = verify
        self.max_block_size = max_block_size
        self.max_total = max_total
        self.roots: list[ParsedCid] | None = None
        self.total = 0
        self._buf = bytearray()
        self._pos = 0

    def feed(self, chunk: bytes) -> list[tuple[ParsedCid, bytes]]:
        self._buf += chunk
        out: list[tuple[ParsedCid, bytes]] = []
        while True:
            item = self._next()
            if item is None:
                break
            out.append(item)
        if self._pos > 1 << 20:
            del self._buf[: self._pos]
            self._pos = 0
        return out

    def finish(self) -> None:
        if self.roots is None:
            raise CarError("CAR stream ended before its header", reason="truncated")
        if self._pos != len(self._buf):
            raise CarError(
                f"CAR stream ended inside a block ({len(self._buf) - self._pos} bytes left over)",
                reason="truncated",
            )

    def _take_length(self, limit: int, what: str) -> int | None:
        try:
            length, start = decode_varint(self._buf, self._pos)
        except ProtobufError as exc:
            if len(self._buf) - self._pos >= 9 or "truncated" not in str(exc):
                raise CarError(f"bad {what} length: {exc}") from exc
            return None
        if length > limit:
            raise CarError(f"{what} of {length} bytes exceeds the limit of {limit}", reason="too-large")
        if start + length > len(self._buf):
            return None
        self._pos = start
        return length

    def _next(self) -> tuple[ParsedCid, bytes] | None:
        if self.roots is None:
            length = self._take_length(MAX_HEADER, "CAR header")
            if length is None:
                return None
            self.roots = decode_header(bytes(self._buf[self._pos : self._pos + length]))
            self._pos += length
            return self._next()
        start = self._pos
        length = self._take_length(self.max_block_size + 64, "CAR section")
        if length is None:
            return None
        section = memoryview(self._buf)[self._pos : self._pos + length]
        try:
            cid_len = _cid_length(section)
            if cid_len > length:
                raise CarError("CAR section shorter than its CID")
            cid = parse_cid(bytes(section[:cid_len]))
        except (ProtobufError, InvalidCidError) as exc:
            self._pos = start
            raise CarError(f"bad CID in CAR section: {exc}") from exc
        data = bytes(section[cid_len:])
        section.release()
        self._pos += length
        self.total += len(data)
        if self.total > self.max_total:
            raise CarError(f"CAR carries more than {self.max_total} bytes of blocks", reason="too-large")
        if self.verify and not cid.matches(data):
            raise CarError(f"block in CAR does not hash to {cid}", reason="block-integrity")
        return cid, data


def read_car(
    data: bytes, *, max_block_size: int = 4 << 20, max_total: int = 1 << 40
) -> tuple[list[ParsedCid], list[tuple[ParsedCid, bytes]]]:
    reader = CarReader(max_block_size=max_block_size, max_total=max_total)
    blocks = reader.feed(data)
    reader.finish()
    return reader.roots or [], blocks
