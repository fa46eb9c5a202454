"""UnixFS on dag-pb: the Data message, parsing of file/directory nodes, and an importer whose CIDs equal
Kubo's `ipfs add` (balanced layout, fixed-size chunks, 174 links per node).

    message Data { required DataType Type = 1; optional bytes Data = 2; optional uint64 filesize = 3;
                   repeated uint64 blocksizes = 4; optional uint64 hashType = 5; optional uint64 fanout = 6;
                   optional uint32 mode = 7; optional UnixTime mtime = 8; }
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from .cid import DAG_PB, RAW, ParsedCid, make_cid
from .dagpb import PBLink, PBNode, decode_node, encode_node
from .protowire import LEN, VARINT, ProtobufError, decode_varint, field_bytes, field_varint, iter_fields

CHUNK_SIZE = 262_144  # Kubo's default chunker, size-262144
MAX_LINKS = 174  # Kubo's helpers.DefaultLinksPerBlock


class DataType(enum.IntEnum):
    RAW = 0
    DIRECTORY = 1
    FILE = 2
    METADATA = 3
    SYMLINK = 4
    HAMT_SHARD = 5


class UnixFSError(ValueError):
    """A block that is not the UnixFS node it should be (wrong type, inconsistent sizes, bad protobuf)."""


@dataclass(frozen=True)
class UnixFSData:
    type: DataType
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = field(default_factory=list)
    hash_type: int | None = None
    fanout: int | None = None

    def encode(self) -> bytes:
        out = field_varint(1, int(self.type))
        if self.data is not None:
            out += field_bytes(2, self.data)
        if self.filesize is not None:
            out += field_varint(3, self.filesize)
        for size in self.blocksizes:  # proto2 repeated, not packed: one key per entry, as Go writes it
            out += field_varint(4, size)
        if self.hash_type is not None:
            out += field_varint(5, self.hash_type)
        if self.fanout is not None:
            out += field_varint(6, self.fanout)
        return out

    @classmethod
    def decode(cls, buf: bytes) -> UnixFSData:
        kind: DataType | None = None
        data = filesize = hash_type = fanout = None
        blocksizes: list[int] = []
        try:
            for num, wire, value in iter_fields(buf):
                if num == 1 and wire == VARINT:
                    try:
                        kind = DataType(value)
                    except ValueError as exc:
                        raise UnixFSError(f"unknown UnixFS type {value}") from exc
                elif num == 2 and wire == LEN:
                    data = bytes(value)  # type: ignore[arg-type]
                elif num == 3 and wire == VARINT:
                    filesize = value
                elif num == 4 and wire == VARINT:
                    blocksizes.append(value)  # type: ignore[arg-type]
                elif num == 4 and wire == LEN:  # packed encoding is legal protobuf too
                    packed, pos = bytes(value), 0  # type: ignore[arg-type]
                    while pos < len(packed):
                        size, pos = decode_varint(packed, pos)
                        blocksizes.append(size)
                elif num == 5 and wire == VARINT:
                    hash_type = value
                elif num == 6 and wire == VARINT:
                    fanout = value
                elif num in (7, 8):
                    pass  # mode / mtime: metadata this node never uses
                else:
                    raise UnixFSError(f"unexpected UnixFS field {num} (wire type {wire})")
        except ProtobufError as exc:
            raise UnixFSError(f"bad UnixFS Data: {exc}") from exc
        if kind is None:
            raise UnixFSError("UnixFS Data without Type")
        return cls(kind, data, filesize, blocksizes, hash_type, fanout)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class FileChild:
    cid: ParsedCid
    filesize: int  # file bytes under this child (the parent's blocksizes entry)
    tsize: int  # encoded bytes of the child's sub-DAG, as the parent's link claims


@dataclass(frozen=True)
class FileNode:
    """One node of a UnixFS file: bytes held inline, then children in order."""

    data: bytes
    children: list[FileChild]
    filesize: int


def parse_file_block(cid: ParsedCid, block: bytes) -> FileNode:
    """Interpret a (CID-verified) block as part of a file; raise UnixFSError if it is anything else."""
    if cid.codec == RAW:
        return FileNode(data=block, children=[], filesize=len(block))
    node = _decode_pb(cid, block)
    if node.data is None:
        raise UnixFSError(f"{cid}: dag-pb node without UnixFS Data")
    meta = UnixFSData.decode(node.data)
    if meta.type not in (DataType.FILE, DataType.RAW):
        raise UnixFSError(f"{cid}: expected a UnixFS file node, found {meta.type.name}")
    if len(meta.blocksizes) != len(node.links):
        raise UnixFSError(f"{cid}: {len(node.links)} links but {len(meta.blocksizes)} blocksizes")
    inline = meta.data or b""
    total = len(inline) + sum(meta.blocksizes)
    if meta.filesize is not None and meta.filesize != total:
        raise UnixFSError(f"{cid}: filesize {meta.filesize} but data + blocksizes = {total}")
    children = [
        FileChild(link.cid, bs, link.tsize) for link, bs in zip(node.links, meta.blocksizes, strict=True)
    ]
    return FileNode(data=inline, children=children, filesize=total)


def parse_directory_block(cid: ParsedCid, block: bytes) -> list[PBLink]:
    """The entries of a plain UnixFS directory (HAMT-sharded directories are refused)."""
    if cid.codec != DAG_PB:
        raise UnixFSError(f"{cid}: a directory must be dag-pb, this is a raw block")
    node = _decode_pb(cid, block)
    meta = UnixFSData.decode(node.data or b"")
    if meta.type != DataType.DIRECTORY:
        raise UnixFSError(f"{cid}: expected a UnixFS directory, found {meta.type.name}")
    return node.links


def _decode_pb(cid: ParsedCid, block: bytes) -> PBNode:
    try:
        return decode_node(block)
    except ProtobufError as exc:
        raise UnixFSError(f"{cid}: bad dag-pb block: {exc}") from exc


def read_file(root: str | ParsedCid, blocks: Mapping[str, bytes]) -> bytes:
    """Reassemble a file from blocks already in memory (keys are canonical CID strings)."""
    from .cid import parse_cid

    out = bytearray()

    def walk(cid: ParsedCid) -> None:
        node = parse_file_block(cid, blocks[cid.text])
        out.extend(node.data)
        for child in node.children:
            walk(child.cid)

    walk(parse_cid(root))
    return bytes(out)


# -------------------------------------------------------------------------------------------- importing


@dataclass(frozen=True)
class ImportedDag:
    root: str  # canonical CID string of the root
    blocks: dict[str, bytes]  # CID string -> block
    size: int  # cumulative size of the DAG in encoded bytes (Kubo's CumulativeSize, the root link's Tsize)


@dataclass(frozen=True)
class _Built:
    cid: ParsedCid
    tsize: int  # cumulative encoded size
    filesize: int  # file bytes under this node


def _add_pb(node: PBNode, version: int, blocks: dict[str, bytes]) -> tuple[ParsedCid, int]:
    block = encode_node(node)
    cid = make_cid(block, codec=DAG_PB, version=version)
    blocks[cid.text] = block
    return cid, len(block) + sum(link.tsize for link in node.links)


def _leaf(chunk: bytes, version: int, raw_leaves: bool, blocks: dict[str, bytes]) -> _Built:
    if raw_leaves:
        cid = make_cid(chunk, codec=RAW, version=version)
        blocks[cid.text] = chunk
        return _Built(cid, len(chunk), len(chunk))
    data = UnixFSData(DataType.FILE, data=chunk or None, filesize=len(chunk))
    cid, tsize = _add_pb(PBNode(data=data.encode()), version, blocks)
    return _Built(cid, tsize, len(chunk))


def _parent(children: list[_Built], version: int, blocks: dict[str, bytes]) -> _Built:
    filesize = sum(c.filesize for c in children)
    data = UnixFSData(DataType.FILE, filesize=filesize, blocksizes=[c.filesize for c in children])
    links = [PBLink(cid=c.cid, name="", tsize=c.tsize) for c in children]
    cid, tsize = _add_pb(PBNode(links=links, data=data.encode()), version, blocks)
    return _Built(cid, tsize, filesize)


def _import_file(
    data: bytes, version: int, raw_leaves: bool, chunk_size: int, max_links: int, blocks: dict[str, bytes]
) -> _Built:
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    level = [_leaf(chunk, version, raw_leaves, blocks) for chunk in chunks]
    # Kubo's balanced builder fills full sub-trees left to right, which is exactly grouping each level
    # into runs of max_links from the left; a single chunk stays the root by itself.
    while len(level) > 1:
        level = [_parent(level[i : i + max_links], version, blocks) for i in range(0, len(level), max_links)]
    return level[0]


def import_file(
    data: bytes,
    *,
    cid_version: int = 1,
    raw_leaves: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_links: int = MAX_LINKS,
) -> ImportedDag:
    """The DAG `ipfs add [--cid-version=1]` builds for these bytes (CIDv1 implies raw leaves, as in Kubo)."""
    if cid_version not in (0, 1):
        raise ValueError(f"cid_version must be 0 or 1, got {cid_version}")
    if raw_leaves is None:
        raw_leaves = cid_version == 1
    if raw_leaves and cid_version == 0:
        raise ValueError("raw leaves need CIDv1 (a raw block has no CIDv0)")
    if chunk_size <= 0 or max_links < 2:
        raise ValueError("chunk_size must be > 0 and max_links >= 2")
    blocks: dict[str, bytes] = {}
    built = _import_file(data, cid_version, raw_leaves, chunk_size, max_links, blocks)
    return ImportedDag(root=built.cid.text, blocks=blocks, size=built.tsize)


def import_directory(
    files: Mapping[str, bytes],
    *,
    cid_version: int = 1,
    raw_leaves: bool | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ImportedDag:
    """A flat directory as `ipfs add -r [--cid-version=1] DIR` builds it: links sorted by name (bytewise),
    each link's Tsize the cumulative size of the file's DAG."""
    if raw_leaves is None:
        raw_leaves = cid_version == 1
    blocks: dict[str, bytes] = {}
    links: list[PBLink] = []
    for name in sorted(files, key=lambda n: n.encode()):
        if not name or "/" in name or "\x00" in name or name in (".", ".."):
            raise ValueError(f"invalid file name for a flat directory: {name!r}")
        built = _import_file(files[name], cid_version, raw_leaves, chunk_size, MAX_LINKS, blocks)
        links.append(PBLink(cid=built.cid, name=name, tsize=built.tsize))
    cid, tsize = _add_pb(
        PBNode(links=links, data=UnixFSData(DataType.DIRECTORY).encode()), cid_version, blocks
    )
    return ImportedDag(root=cid.text, blocks=blocks, size=tsize)
