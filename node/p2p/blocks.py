"""Block/CID checks for bitswap: every byte that arrives from a peer is checked against the CID asked for.

Same rules as inference.ipfs.cid (sha2-256 only, same canonical text), plus the bitswap CID prefix.
"""

from __future__ import annotations

from multiformats import CID, multihash, varint

from node.p2p.errors import BadBlockError

# Like inference.ipfs.cid, only sha2-256: above all never "identity", which would let a peer inline any bytes.
SUPPORTED_HASHES = frozenset({"sha2-256"})


def parse_cid(cid: str | bytes | CID) -> CID:
    try:
        return cid if isinstance(cid, CID) else CID.decode(cid)
    except Exception as exc:
        message = f"not a valid CID: {cid!r:.80} ({exc}); give a base32/base58 CID or its bytes"
        raise ValueError(message) from exc


def cid_key(cid: str | bytes | CID) -> str:
    """Canonical text (as inference.ipfs.cid): base58btc for CIDv0, base32 for CIDv1."""
    parsed = parse_cid(cid)
    return parsed.encode(None) if parsed.version == 0 else parsed.encode("base32")


def verify_block(cid: str | bytes | CID, data: bytes) -> None:
    """Raise BadBlockError unless `data` hashes to the multihash inside `cid`."""
    parsed = parse_cid(cid)
    name = parsed.hashfun.name
    if name not in SUPPORTED_HASHES:
        raise BadBlockError(f"block {parsed}: hash function {name} is not accepted from peers")
    if multihash.digest(data, name) != parsed.digest:
        raise BadBlockError(f"block {parsed}: content does not match its CID ({len(data)} bytes received)")


def cid_prefix(cid: str | bytes | CID) -> bytes:
    """Bitswap 1.1+ block prefix: varint version, codec, multihash code and digest length."""
    parsed = parse_cid(cid)
    return b"".join(
        varint.encode(n)
        for n in (parsed.version, parsed.codec.code, parsed.hashfun.code, len(parsed.raw_digest))
    )


def cid_from_prefix(prefix: bytes, data: bytes) -> CID:
    """Rebuild the CID of a payload block from its prefix by hashing the data (that is what makes it safe)."""
    values: list[int] = []
    rest = memoryview(prefix)
    for _ in range(4):
        value, used, _tail = varint.decode_raw(rest)
        values.append(value)
        rest = rest[used:]
    version, codec, hash_code, length = values
    hash_name = multihash.get(hash_code).name
    if hash_name not in SUPPORTED_HASHES:
        raise BadBlockError(f"payload block prefix names hash {hash_name}, which is not accepted from peers")
    digest = multihash.digest(data, hash_name)
    if len(multihash.unwrap(digest)) != length:
        raise BadBlockError(f"payload block prefix claims a {length}-byte digest for {hash_name}")
    if version == 0:
        return CID("base58btc", 0, "dag-pb", digest)
    return CID("base32", version, codec, digest)
