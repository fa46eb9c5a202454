"""CARv1 (content-addressed archive): write, and incremental readers: CarFramer cuts blocks out of the
stream as views of the received chunks (no copy; the caller verifies), CarReader verifies every block
against its CID as soon as the block is complete, so a lying stream is refused at the first bad block.

    varint(len(header)) | DAG-CBOR {"roots": [CID, ...], "version": 1}
    then for each block: varint(len(cid) + len(data)) | cid bytes | data
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence

from .blockdata import Pieces
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


MAX_SECTION_HEAD = 9 + 64  # a section's length varint and its CID (a sha2-256 CID is 34 or 36 bytes)


class CarFramer:
    """Cuts a CAR stream into (cid, Pieces) as bytes arrive, without copying block bytes: each block is
    handed out as views of the chunks it lies in (only a section's few head bytes are ever joined). The
    blocks are NOT verified here: whoever takes them must check each against its CID before use.

    max_block_size bounds any one section before it is buffered, max_total bounds the sum of block bytes:
    both are enforced while streaming, so an oversize stream is cut off at the first excess byte."""

    def __init__(self, *, max_block_size: int, max_total: int) -> None:
        self.max_block_size = max_block_size
        self.max_total = max_total
        self.roots: list[ParsedCid] | None = None
        self.total = 0
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._avail = 0  # bytes in _chunks

    def feed(self, chunk: bytes | memoryview) -> list[tuple[ParsedCid, Pieces]]:
        """The blocks completed by this chunk. Keep no reference to a mutable chunk you reuse: the
        blocks are views of it (pass bytes, as aiohttp gives)."""
        if len(chunk):
            self._chunks.append(memoryview(chunk).cast("B"))
            self._avail += len(chunk)
        out: list[tuple[ParsedCid, Pieces]] = []
        while (item := self._next()) is not None:
            out.append(item)
        return out

    def finish(self) -> None:
        if self.roots is None:
            raise CarError("CAR stream ended before its header", reason="truncated")
        if self._avail:
            raise CarError(
                f"CAR stream ended inside a block ({self._avail} bytes left over)", reason="truncated"
            )

    def _peek(self, n: int) -> bytes | memoryview:
        """The first min(n, available) bytes, contiguous (a view when they lie in the first chunk)."""
        first = self._chunks[0] if self._chunks else memoryview(b"")
        if len(first) >= n or len(first) == self._avail:
            return first[:n]
        out = bytearray()
        for chunk in self._chunks:
            out += chunk[: n - len(out)]
            if len(out) >= n:
                break
        return bytes(out)

    def _take(self, n: int) -> tuple[memoryview, ...]:
        """Remove n bytes (n <= available) from the front, as views."""
        parts: list[memoryview] = []
        self._avail -= n
        while n:
            chunk = self._chunks[0]
            if len(chunk) <= n:
                parts.append(self._chunks.popleft())
                n -= len(chunk)
            else:
                parts.append(chunk[:n])
                self._chunks[0] = chunk[n:]
                n = 0
        return tuple(parts)

    def _section_length(self, head: bytes | memoryview, limit: int, what: str) -> tuple[int, int] | None:
        try:
            length, start = decode_varint(head, 0)
        except ProtobufError as exc:
            if len(head) >= 9 or "truncated" not in str(exc):
                raise CarError(f"bad {what} length: {exc}") from exc
            return None
        if length > limit:
            raise CarError(f"{what} of {length} bytes exceeds the limit of {limit}", reason="too-large")
        if start + length > self._avail:
            return None
        return length, start

    def _next(self) -> tuple[ParsedCid, Pieces] | None:
        if not self._avail:
            return None
        if self.roots is None:
            framed = self._section_length(self._peek(9), MAX_HEADER, "CAR header")
            if framed is None:
                return None
            length, start = framed
            self.roots = decode_header(bytes(self._peek(start + length)[start:]))
            self._take(start + length)
            return self._next()
        head = self._peek(MAX_SECTION_HEAD)
        framed = self._section_length(head, self.max_block_size + 64, "CAR section")
        if framed is None:
            return None
        length, start = framed
        try:
            cid_len = _cid_length(head[start : start + length])
            if cid_len > length or start + cid_len > len(head):
                raise CarError("CAR section shorter than its CID, or a CID that is not sha2-256")
            cid = parse_cid(bytes(head[start : start + cid_len]))
        except (ProtobufError, InvalidCidError) as exc:
            raise CarError(f"bad CID in CAR section: {exc}") from exc
        size = length - cid_len
        if self.total + size > self.max_total:
            raise CarError(f"CAR carries more than {self.max_total} bytes of blocks", reason="too-large")
        self._take(start + cid_len)
        self.total += size
        return cid, Pieces(self._take(size), size)


class CarReader:
    """Feed bytes as they arrive; get back (cid, block) pairs, each already verified against its CID
    (each block joined into one bytes object: the fetcher uses CarFramer's views instead)."""

    def __init__(self, *, max_block_size: int, max_total: int, verify: bool = True) -> None:
        """verify=False leaves the hashing to the caller (who must then check every block before use)."""
        self.verify = verify
        self._framer = CarFramer(max_block_size=max_block_size, max_total=max_total)

    @property
    def roots(self) -> list[ParsedCid] | None:
        return self._framer.roots

    @property
    def total(self) -> int:
        return self._framer.total

    def feed(self, chunk: bytes) -> list[tuple[ParsedCid, bytes]]:
        out = []
        for cid, pieces in self._framer.feed(bytes(chunk)):
            data = pieces.tobytes()
            if self.verify and not cid.matches(data):
                raise CarError(f"block in CAR does not hash to {cid}", reason="block-integrity")
            out.append((cid, data))
        return out

    def finish(self) -> None:
        self._framer.finish()


def read_car(
    data: bytes, *, max_block_size: int = 4 << 20, max_total: int = 1 << 40
) -> tuple[list[ParsedCid], list[tuple[ParsedCid, bytes]]]:
    reader = CarReader(max_block_size=max_block_size, max_total=max_total)
    blocks = reader.feed(data)
    reader.finish()
    return reader.roots or [], blocks
