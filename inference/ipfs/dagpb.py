"""dag-pb (the IPLD codec of UnixFS nodes): encode exactly as Kubo does, decode strictly per the spec.

    message PBLink { optional bytes Hash = 1; optional string Name = 2; optional uint64 Tsize = 3; }
    message PBNode { repeated PBLink Links = 2; optional bytes Data = 1; }

Kubo writes every link's Name (even "") and Tsize, and writes Links before Data."""

from __future__ import annotations

from dataclasses import dataclass, field

from .cid import InvalidCidError, ParsedCid, parse_cid
from .protowire import LEN, VARINT, ProtobufError, encode_varint, field_bytes, field_varint, iter_fields, key


@dataclass(frozen=True)
class PBLink:
    cid: ParsedCid
    name: str = ""
    tsize: int = 0  # cumulative size of the linked sub-DAG in encoded bytes


@dataclass(frozen=True)
class PBNode:
    links: list[PBLink] = field(default_factory=list)
    data: bytes | None = None


def encode_node(node: PBNode) -> bytes:
    out = bytearray()
    for link in node.links:
        body = (
            field_bytes(1, link.cid.to_bytes())
            + field_bytes(2, link.name.encode())
            + field_varint(3, link.tsize)
        )
        out += key(2, LEN) + encode_varint(len(body)) + body
    if node.data is not None:
        out += field_bytes(1, node.data)
    return bytes(out)


def _decode_link(buf: memoryview) -> PBLink:
    cid: ParsedCid | None = None
    name = ""
    tsize = 0
    last = 0
    for num, wire, value in iter_fields(buf):
        if num <= last:
            raise ProtobufError("PBLink fields out of order or repeated")
        last = num
        if num == 1 and wire == LEN:
            try:
                cid = parse_cid(bytes(value))  # type: ignore[arg-type]
            except InvalidCidError as exc:
                raise ProtobufError(f"PBLink.Hash: {exc}") from exc
        elif num == 2 and wire == LEN:
            try:
                name = bytes(value).decode()  # type: ignore[arg-type]
            except UnicodeDecodeError as exc:
                raise ProtobufError("PBLink.Name is not UTF-8") from exc
        elif num == 3 and wire == VARINT:
            tsize = value  # type: ignore[assignment]
        else:
            raise ProtobufError(f"unexpected PBLink field {num} (wire type {wire})")
    if cid is None:
        raise ProtobufError("PBLink without Hash")
    return PBLink(cid=cid, name=name, tsize=tsize)


def decode_node(block: bytes) -> PBNode:
    """Parse a dag-pb block. Raises ProtobufError for anything the dag-pb spec does not allow."""
    links: list[PBLink] = []
    data: bytes | None = None
    for num, wire, value in iter_fields(block):
        if data is not None:
            raise ProtobufError("dag-pb field after Data (Data must come last, once)")
        if num == 2 and wire == LEN:
            links.append(_decode_link(value))  # type: ignore[arg-type]
        elif num == 1 and wire == LEN:
            data = bytes(value)  # type: ignore[arg-type]
        else:
            raise ProtobufError(f"unexpected PBNode field {num} (wire type {wire})")
    return PBNode(links=links, data=data)
