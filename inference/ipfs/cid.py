"""CIDs for the two codecs UnixFS uses (dag-pb, raw), always sha2-256.

Only sha2-256 is accepted: a CID naming another hash function (or the identity "hash", which would let a
peer inline arbitrary bytes) is refused before any byte is hashed."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from multiformats import CID

DAG_PB = 0x70
RAW = 0x55
SHA2_256 = 0x12
_CODEC_NAMES = {DAG_PB: "dag-pb", RAW: "raw"}


class InvalidCidError(ValueError):
    """A string or byte string that is not a CID this node can verify."""


@dataclass(frozen=True)
class ParsedCid:
    version: int
    codec: int  # DAG_PB or RAW
    digest: bytes  # the 32-byte sha2-256 digest
    text: str  # canonical string: base58btc for v0, base32 for v1

    @property
    def multihash(self) -> bytes:
        return bytes([SHA2_256, 32]) + self.digest

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return bytes([1, self.codec]) + self.multihash  # both codecs and version 1 are one-byte varints

    def matches(self, block: bytes) -> bool:
        return hashlib.sha256(block).digest() == self.digest

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"ParsedCid({self.text})"


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}


# The two canonical encodings (base58btc CIDv0, base32 CIDv1) are done here with the standard library: the
# multiformats package validates types at run time and costs ~0.3 ms per CID, which dominated fetching a
# DAG of 256 KiB blocks. Every other multibase goes through multiformats; tests cross-check both paths.
def _b58encode(raw: bytes) -> str:
    n = int.from_bytes(raw, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(raw) - len(raw.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + _B58_INDEX[c]
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def _b32encode(raw: bytes) -> str:
    return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _parse_binary(raw: bytes) -> ParsedCid | None:
    """Fast path for sha2-256 CIDs in binary form; None for anything else (left to multiformats)."""
    if len(raw) == 34 and raw[0] == SHA2_256 and raw[1] == 32:
        digest = raw[2:]
        return ParsedCid(0, DAG_PB, digest, _b58encode(raw))
    if len(raw) == 36 and raw[0] == 1 and raw[1] in _CODEC_NAMES and raw[2] == SHA2_256 and raw[3] == 32:
        return ParsedCid(1, raw[1], raw[4:], _b32encode(raw))
    return None


def _parse_fast(value: str | bytes) -> ParsedCid | None:
    try:
        if isinstance(value, bytes):
            return _parse_binary(value)
        if len(value) == 46 and value.startswith("Qm"):
            return _parse_binary(_b58decode(value))
        if len(value) == 59 and value.startswith("b") and value == value.lower():
            body = value[1:].upper()
            return _parse_binary(base64.b32decode(body + "=" * (-len(body) % 8)))
    except (KeyError, ValueError):
        return None
    return None


def _from_cid(cid: CID, shown: object) -> ParsedCid:
    if cid.hashfun.code != SHA2_256 or len(cid.raw_digest) != 32:
        raise InvalidCidError(f"CID {shown} uses hash {cid.hashfun.name}; only sha2-256 is accepted")
    if cid.codec.code not in _CODEC_NAMES:
        raise InvalidCidError(
            f"CID {shown} has codec {cid.codec.name}; only dag-pb and raw (UnixFS) are accepted"
        )
    text = cid.encode(None) if cid.version == 0 else cid.encode("base32")
    return ParsedCid(version=cid.version, codec=cid.codec.code, digest=bytes(cid.raw_digest), text=text)


def parse_cid(value: str | bytes | ParsedCid) -> ParsedCid:
    """Parse a CID given as text (any multibase) or binary; raise InvalidCidError with the reason."""
    if isinstance(value, ParsedCid):
        return value
    fast = _parse_fast(value)
    if fast is not None:
        return fast
    try:
        cid = CID.decode(value)
    except Exception as exc:  # multiformats raises several unrelated types for bad input
        raise InvalidCidError(f"not a valid CID: {value!r:.80} ({exc})") from exc
    return _from_cid(cid, value if isinstance(value, str) else cid)


def make_cid(block: bytes, *, codec: int, version: int) -> ParsedCid:
    """The CID of a block, as Kubo computes it (sha2-256)."""
    if codec not in _CODEC_NAMES:
        raise ValueError(f"unsupported codec 0x{codec:x}")
    if version == 0 and codec != DAG_PB:
        raise ValueError("CIDv0 exists only for dag-pb blocks")
    if version not in (0, 1):
        raise ValueError(f"CID version must be 0 or 1, got {version}")
    digest = hashlib.sha256(block).digest()
    mh = bytes([SHA2_256, 32]) + digest
    text = _b58encode(mh) if version == 0 else _b32encode(bytes([1, codec]) + mh)
    return ParsedCid(version=version, codec=codec, digest=digest, text=text)


def block_key(cid: str | ParsedCid) -> str:
    """A file-system-safe name for a block, derived only from its multihash (lowercase base32, no padding),
    so a CIDv0 and a CIDv1 of the same bytes share one stored block."""
    return _b32encode(parse_cid(cid).multihash)[1:]
