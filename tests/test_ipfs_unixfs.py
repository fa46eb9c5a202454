"""CID parity with Kubo's `ipfs add`, and an independent re-derivation of the DAG structure.

Reference CIDs: the two "hello adapters" vectors and the empty-file CIDs are Kubo's published values; the
others were produced with js ipfs-unixfs-importer 17.1.1 using Kubo's legacy profile
(`profile: 'unixfs-v0-2015'`: 256 KiB chunks, 174 links, balanced; `cidVersion: 1, rawLeaves: true` for
`--cid-version=1`), an implementation that is independent of this one and tested against Kubo. Inputs are
SHAKE-256 streams so anyone can regenerate them (docs/ipfs.md shows the check against a real Kubo)."""

from __future__ import annotations

import hashlib

import pytest

from inference.ipfs.cid import DAG_PB, RAW, InvalidCidError, make_cid, parse_cid
from inference.ipfs.dagpb import PBLink, PBNode, decode_node, encode_node
from inference.ipfs.protowire import ProtobufError
from inference.ipfs.unixfs import (
    CHUNK_SIZE,
    MAX_LINKS,
    DataType,
    ImportedDag,
    UnixFSData,
    UnixFSError,
    import_directory,
    import_file,
    parse_directory_block,
    parse_file_block,
    read_file,
)

KIB = 1024


def vector_bytes(n: int) -> bytes:
    return hashlib.shake_256(f"openlora-ipfs-vector-{n}".encode()).digest(n) if n else b""


# size -> (CIDv0, CIDv1 with raw leaves)
VECTORS = {
    0: (
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",
        "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    ),
    1: (
        "Qmdc2d3XU7agbwsNWPsdgjHaxujf4A1ERiCXehnRuaKrSj",
        "bafkreiay6u4e2wf4wg52bpgz42thqhi2nlbmykamgmhmxk3mw6jrw4qvki",
    ),
    256 * KIB - 1: (
        "QmXcqUEhYUDbS9wVeMJ9MbroQuLkE8U9Gy4RFGSNiWjnAf",
        "bafkreidabmbrfwdrpwbvptdvatrttiusfve3ar3l5o5bm4utpuqvw24d5y",
    ),
    256 * KIB: (
        "QmRmSFcf6Zrw7eKui6n7PibeQr9jzsY8fpztGQbEqaHVXE",
        "bafkreie5vtvh7h6rjjuhsmmxwniugipbqwwn426xyojjami472tmlbnefi",
    ),
    256 * KIB + 1: (
        "QmNUgtpMcbD2ZCk21sMzKAsuzaXDBqDEFfSUGZNjKjNbE1",
        "bafybeichwf5xt352kweh7rvvobblavtjmb4lkungqo4z4igl5bhjnfl3vm",
    ),
    1024 * KIB: (
        "QmWmePBt3P8ku9pd5sX3JLEGQ7hVJ44oN9BCr4XaiwZV2o",
        "bafybeia3g7jaq6ikfntc7zsoveryubz3aycf6ajk6dqi6dfarfnxkhx4gi",
    ),
    174 * CHUNK_SIZE: (  # exactly one full node: the last size with depth 1
        "QmRGmaPcKxti9DowPLuKuPkE4dYKSQgt372kRJSZwpd7ep",
        "bafybeihbp56chp4txakf4ulnoimy6qfk6b2texql3ozn6m2kz4b6atcloq",
    ),
    174 * CHUNK_SIZE + 1: (  # one byte more: depth 2
        "Qmev8mLNadtS2EYE65wSSPzMvbTKRjVXpUoEwtTGcRiL7A",
        "bafybeiaseb37iz5lw6dmq5kltkvmrkzb4k4vhgnxb7ea6t3r4qr3uipuwm",
    ),
    45 * 1024 * KIB: (  # the size: 180 chunks, two levels
        "QmSpudcRoeQ5iYtfWi7Guzg2A3kETZis3xd92mwrnRjsTG",
        "bafybeigstufwmfefaezj3ds6ladvswwedmvri4mpews37ddbf2wouuensm",
    ),
}
HELLO = b"hello adapters\n"


def test_hello_vectors_match_kubo() -> None:
    assert import_file(HELLO, cid_version=0).root == "QmTDnViHKGcuapS7PfNUQGPbnFaSV4T3M7h85zynvdQPdX"
    assert import_file(HELLO).root == "bafkreicvekizc5qths2pt5ez4ceztmx6nwvjqbqlc2xtktoh6qhomalhyq"


@pytest.mark.parametrize("size", sorted(VECTORS))
def test_file_cids_match_reference(size: int) -> None:
    data = vector_bytes(size)
    v0, v1 = VECTORS[size]
    dag0 = import_file(data, cid_version=0)
    dag1 = import_file(data, cid_version=1)
    assert (dag0.root, dag1.root) == (v0, v1)
    assert read_file(dag0.root, dag0.blocks) == data
    assert read_file(dag1.root, dag1.blocks) == data


def test_directory_cids_match_reference() -> None:
    files = {
        "adapter_model.safetensors": hashlib.shake_256(b"openlora-ipfs-dir-model").digest(600_000),
        "adapter_config.json": b'{"r": 8, "lora_alpha": 16}\n',
    }
    assert import_directory(files, cid_version=0).root == "QmNdgXVqPhDeKcFk6T8H5vdoePpPaS8S4VoMtM5h5yrxU4"
    dag = import_directory(files)
    assert dag.root == "bafybeibe6ab6mwwe3ro5nvgd4lh4uglmhfn2abycr4udqd266nhlani7fu"
    links = parse_directory_block(parse_cid(dag.root), dag.blocks[dag.root])
    assert [link.name for link in links] == ["adapter_config.json", "adapter_model.safetensors"]  # sorted
    for link in links:
        assert link.tsize == import_file(files[link.name]).size
        assert read_file(link.cid, dag.blocks) == files[link.name]
    assert dag.size == len(dag.blocks[dag.root]) + sum(link.tsize for link in links)


def test_empty_directory_matches_kubo() -> None:
    assert import_directory({}, cid_version=0).root == "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


# ---- independent re-derivation of the structure, straight from the encoded blocks


def _walk(dag: ImportedDag, cid_text: str, depth: int, seen_depths: set[int]) -> tuple[int, int]:
    """Check one node against the rules of Kubo's balanced builder; return (file size, cumulative size)."""
    cid = parse_cid(cid_text)
    block = dag.blocks[cid_text]
    if cid.codec == RAW:
        seen_depths.add(depth)
        assert 0 < len(block) <= CHUNK_SIZE
        return len(block), len(block)
    node = decode_node(block)
    meta = UnixFSData.decode(node.data or b"")
    assert meta.type == DataType.FILE
    if not node.links:  # a CIDv0 leaf: dag-pb with the chunk inline
        seen_depths.add(depth)
        assert meta.data is not None and meta.filesize == len(meta.data) <= CHUNK_SIZE
        return len(meta.data), len(block)
    assert meta.data is None and 1 <= len(node.links) <= MAX_LINKS
    assert all(link.name == "" for link in node.links)
    assert len(meta.blocksizes) == len(node.links)
    cumulative = len(block)
    for link, blocksize in zip(node.links, meta.blocksizes, strict=True):
        filesize, child_cumulative = _walk(dag, link.cid.text, depth + 1, seen_depths)
        assert blocksize == filesize
        assert link.tsize == child_cumulative  # Tsize = the child's encoded bytes, all the way down
        cumulative += child_cumulative
    assert meta.filesize == sum(meta.blocksizes)
    return meta.filesize, cumulative


@pytest.mark.parametrize("cid_version", [0, 1])
def test_multi_level_tree_structure(cid_version: int) -> None:
    size = 45 * 1024 * KIB
    data = vector_bytes(size)
    dag = import_file(data, cid_version=cid_version)
    depths: set[int] = set()
    filesize, cumulative = _walk(dag, dag.root, 0, depths)
    assert filesize == size
    assert cumulative == dag.size
    assert depths == {2}  # balanced: every leaf at the same depth
    root = decode_node(dag.blocks[dag.root])
    assert len(root.links) == 2  # 180 chunks = one full node of 174 + one of 6
    first, second = (decode_node(dag.blocks[link.cid.text]) for link in root.links)
    assert (len(first.links), len(second.links)) == (174, 6)
    assert UnixFSData.decode(root.data or b"").blocksizes == [174 * CHUNK_SIZE, 6 * CHUNK_SIZE]
    leaf_codec = RAW if cid_version == 1 else DAG_PB
    assert all(link.cid.codec == leaf_codec for link in first.links)
    assert len(dag.blocks) == 180 + 3


def test_small_chunks_make_deeper_trees() -> None:
    data = vector_bytes(5000)
    dag = import_file(data, chunk_size=10, max_links=4)  # 500 chunks with 4 links per node: depth 5
    depths: set[int] = set()
    assert _walk(dag, dag.root, 0, depths)[0] == 5000
    assert depths == {5}
    assert read_file(dag.root, dag.blocks) == data


def test_kubo_leaf_encoding_bytes() -> None:
    # CIDv0 leaf: PBNode{Data: UnixFS{Type: File, Data: chunk, filesize: 15}}, no links
    dag = import_file(HELLO, cid_version=0)
    assert dag.blocks[dag.root] == b"\x0a\x15\x08\x02\x12\x0f" + HELLO + b"\x18\x0f"
    # empty file: Type File, filesize 0 present, no Data
    assert import_file(b"", cid_version=0).blocks["QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"] == (
        b"\x0a\x04\x08\x02\x18\x00"
    )


def test_import_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="raw leaves need CIDv1"):
        import_file(b"x", cid_version=0, raw_leaves=True)
    with pytest.raises(ValueError, match="cid_version"):
        import_file(b"x", cid_version=2)
    for name in ("", "a/b", "..", "x\x00"):
        with pytest.raises(ValueError, match="invalid file name"):
            import_directory({name: b"x"})


# ---- strict decoding of untrusted blocks


def test_dagpb_round_trip_and_strictness() -> None:
    child = make_cid(b"leaf", codec=RAW, version=1)
    node = PBNode(links=[PBLink(child, "a", 4)], data=b"\x08\x01")
    encoded = encode_node(node)
    assert decode_node(encoded) == node
    with pytest.raises(ProtobufError, match="after Data"):
        decode_node(encoded[-4:] + encoded[:-4])  # Data before Links
    with pytest.raises(ProtobufError):
        decode_node(encoded[:-1])  # truncated
    with pytest.raises(ProtobufError, match="unexpected PBNode field"):
        decode_node(b"\x18\x01")  # field 3 does not exist in PBNode
    with pytest.raises(ProtobufError, match="without Hash"):
        decode_node(b"\x12\x02\x18\x01")
    with pytest.raises(ProtobufError, match="non-canonical"):
        decode_node(b"\x0a\x80\x00")


def test_unixfs_parsing_refuses_inconsistent_nodes() -> None:
    cid = make_cid(b"x", codec=DAG_PB, version=1)
    leaf = make_cid(b"abc", codec=RAW, version=1)
    lying = encode_node(
        PBNode([PBLink(leaf, "", 3)], UnixFSData(DataType.FILE, filesize=99, blocksizes=[3]).encode())
    )
    with pytest.raises(UnixFSError, match="filesize 99"):
        parse_file_block(cid, lying)
    mismatch = encode_node(PBNode([PBLink(leaf, "", 3)], UnixFSData(DataType.FILE, filesize=0).encode()))
    with pytest.raises(UnixFSError, match="1 links but 0 blocksizes"):
        parse_file_block(cid, mismatch)
    directory = encode_node(PBNode([], UnixFSData(DataType.DIRECTORY).encode()))
    with pytest.raises(UnixFSError, match="expected a UnixFS file"):
        parse_file_block(cid, directory)
    hamt = encode_node(PBNode([], UnixFSData(DataType.HAMT_SHARD, fanout=256).encode()))
    with pytest.raises(UnixFSError, match="expected a UnixFS directory, found HAMT_SHARD"):
        parse_directory_block(cid, hamt)
    with pytest.raises(UnixFSError, match="unknown UnixFS type"):
        UnixFSData.decode(b"\x08\x09")


def test_cid_parsing() -> None:
    v1 = make_cid(HELLO, codec=RAW, version=1)
    assert parse_cid(v1.text) == parse_cid(v1.to_bytes()) == v1
    # other multibases go through the multiformats package and normalise to base32
    from multiformats import CID

    assert parse_cid(CID.decode(v1.text).encode("base58btc")) == v1
    assert parse_cid(CID.decode(v1.text).encode("base16")) == v1
    with pytest.raises(InvalidCidError, match="identity"):
        parse_cid(str(CID("base32", 1, "raw", ("identity", b"hello"))))  # inline bytes, no hash at all
    with pytest.raises(InvalidCidError, match="codec"):
        parse_cid(str(CID("base32", 1, "dag-cbor", ("sha2-256", bytes(32)))))
    with pytest.raises(InvalidCidError, match="sha2-256"):
        parse_cid(str(CID("base32", 1, "raw", ("sha2-512", bytes(64)))))
    with pytest.raises(InvalidCidError, match="not a valid CID"):
        parse_cid("../../etc/passwd")
