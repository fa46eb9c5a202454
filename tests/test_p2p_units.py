"""node.p2p without a network: wire format, block checks, announcements, claim delay, identity, config."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from eth_account import Account
from libp2p.bitswap.pb import bitswap_pb2  # an independent implementation's schema, to check our wire bytes
from multiformats import CID, multihash

from inference.models import base_model_id
from node.p2p import (
    AnnouncementBook,
    AnnouncementRejected,
    Capacity,
    P2PConfig,
    PeerAnnouncement,
    claim_delay,
)
from node.p2p.announcements import encode_announcement, sign_announcement, topic_for
from node.p2p.bitswap_message import (
    BitswapMessage,
    BlockPresence,
    PayloadBlock,
    PresenceType,
    WantEntry,
    WantType,
    frame,
)
from node.p2p.blocks import cid_from_prefix, cid_key, cid_prefix, verify_block
from node.p2p.errors import BadBlockError, IdentityFileError
from node.p2p.identity import load_or_create_identity, peer_id_of

BASE = base_model_id("tiny-llama")
RAW_CID = str(CID("base32", 1, "raw", multihash.digest(b"hello", "sha2-256")))
# the empty UnixFS directory, a well-known Kubo CIDv0
EMPTY_DIR_V0 = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
EMPTY_DIR_BLOCK = bytes.fromhex("0a020801")


# ---- wire format ----


def test_bitswap_message_matches_an_independent_protobuf_schema() -> None:
    msg = BitswapMessage(
        wantlist=[
            WantEntry(
                cid=bytes(CID.decode(RAW_CID)), priority=5, want_type=WantType.HAVE, send_dont_have=True
            ),
            WantEntry(cid=bytes(CID.decode(EMPTY_DIR_V0)), priority=-1, cancel=True),
        ],
        full_wantlist=True,
        payload=[PayloadBlock(prefix=cid_prefix(RAW_CID), data=b"hello")],
        presences=[BlockPresence(cid=bytes(CID.decode(RAW_CID)), type=PresenceType.DONT_HAVE)],
        pending_bytes=77,
    )
    ref = bitswap_pb2.Message()
    ref.ParseFromString(msg.encode())
    assert [e.block for e in ref.wantlist.entries] == [w.cid for w in msg.wantlist]
    assert [e.priority for e in ref.wantlist.entries] == [5, -1]
    assert [e.wantType for e in ref.wantlist.entries] == [1, 0]
    assert [e.sendDontHave for e in ref.wantlist.entries] == [True, False]
    assert [e.cancel for e in ref.wantlist.entries] == [False, True]
    assert ref.wantlist.full and ref.pendingBytes == 77
    assert [(b.prefix, b.data) for b in ref.payload] == [(cid_prefix(RAW_CID), b"hello")]
    assert [(p.cid, p.type) for p in ref.blockPresences] == [(bytes(CID.decode(RAW_CID)), 1)]
    # and back: bytes written by the reference decode to the same message
    assert BitswapMessage.decode(ref.SerializeToString()) == msg


def test_legacy_blocks_and_frames() -> None:
    ref = bitswap_pb2.Message()
    ref.blocks.append(EMPTY_DIR_BLOCK)
    assert BitswapMessage.decode(ref.SerializeToString()).legacy_blocks == [EMPTY_DIR_BLOCK]
    body = BitswapMessage(presences=[BlockPresence(b"\x01" * 300, PresenceType.HAVE)]).encode()
    framed = frame(BitswapMessage(presences=[BlockPresence(b"\x01" * 300, PresenceType.HAVE)]))
    assert framed == bytes([len(body) & 0x7F | 0x80, len(body) >> 7]) + body


@pytest.mark.parametrize("garbage", [b"\x0a\xff\x01", b"\x0a\x05ab", b"\x2a\x00\x07"])
def test_malformed_bitswap_message_raises(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        BitswapMessage.decode(garbage)


# ---- blocks ----


def test_prefix_rebuilds_the_cid_only_for_the_right_bytes() -> None:
    assert cid_prefix(EMPTY_DIR_V0) == bytes([0, 0x70, 0x12, 0x20])
    assert cid_key(cid_from_prefix(cid_prefix(EMPTY_DIR_V0), EMPTY_DIR_BLOCK)) == EMPTY_DIR_V0
    assert cid_key(cid_from_prefix(cid_prefix(RAW_CID), b"hello")) == RAW_CID
    assert cid_key(cid_from_prefix(cid_prefix(RAW_CID), b"hellO")) != RAW_CID
    verify_block(EMPTY_DIR_V0, EMPTY_DIR_BLOCK)
    with pytest.raises(BadBlockError, match="does not match"):
        verify_block(RAW_CID, b"hellO")


def test_identity_and_non_sha256_hashes_are_refused() -> None:
    inline = CID("base32", 1, "raw", multihash.digest(b"anything", "identity"))
    with pytest.raises(BadBlockError, match="not accepted"):
        verify_block(inline, b"anything")
    with pytest.raises(BadBlockError, match="not accepted"):
        cid_from_prefix(bytes([1, 0x55, 0x00, 8]), b"anything")


# ---- announcements ----


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_ann(
    signer, clock: Clock, seq: int = 1, peer_id: str = "12D3KooWPeer", **changes
) -> PeerAnnouncement:
    """Signed; `changes` are applied after signing (to forge)."""
    ann = PeerAnnouncement(
        address=signer.address,
        peer_id=peer_id,
        base_model_id=BASE.hex(),
        seq=seq,
        issued_at=clock.now,
        ttl_s=30,
        capacity=Capacity(2, 0, 30.0, wait_s=1.5),
        device_adapters=(RAW_CID,),
    )
    return dataclasses.replace(sign_announcement(signer, ann), **changes)


@pytest.fixture
def book_parts():
    registered = Account.create()
    clock = Clock()
    book = AnnouncementBook(BASE, lambda addr: addr == registered.address, min_interval_s=5, clock=clock)
    return registered, clock, book


def test_signed_registered_announcement_is_accepted_and_expires(book_parts) -> None:
    signer, clock, book = book_parts
    ann = book.accept(encode_announcement(make_ann(signer, clock)), "12D3KooWPeer")
    assert ann.capacity == Capacity(2, 0, 30.0, 1.5) and book.warm_peers(RAW_CID) == [ann]
    assert book.warm_peers("bafkreiother") == []
    clock.now += 31
    assert book.warm_peers(RAW_CID) == [] and book.current() == []


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "bad signature"),
        ("unregistered", "not a registered"),
        ("forged_address", "not by the announced address"),
        ("tampered", "not by the announced address"),
        ("expired", "expired"),
        ("future", "future"),
        ("other_model", "another base model"),
        ("wrong_peer", "peer id differs"),
        ("not_canonical", "not canonically encoded"),
    ],
)
def test_bad_announcements_are_rejected(book_parts, case: str, reason: str) -> None:
    signer, clock, book = book_parts
    outsider = Account.create()
    data = encode_announcement(make_ann(signer, clock))
    if case == "unsigned":
        data = encode_announcement(make_ann(signer, clock, signature=""))
    elif case == "unregistered":
        data = encode_announcement(make_ann(outsider, clock))
    elif case == "forged_address":
        data = encode_announcement(make_ann(outsider, clock, address=signer.address))
    elif case == "tampered":
        data = encode_announcement(make_ann(signer, clock, capacity=Capacity(99, 0, 1.0)))
    elif case == "expired":
        clock.now += 60
    elif case == "future":
        clock.now -= 120
    elif case == "other_model":
        data = encode_announcement(make_ann(signer, clock, base_model_id="00" * 32))
    elif case == "not_canonical":
        data = data.replace(b'{"address"', b'{ "address"')
    with pytest.raises(AnnouncementRejected, match=reason):
        book.accept(data, "12D3KooWOther" if case == "wrong_peer" else "12D3KooWPeer")
    assert book.current() == [] and book.rejected == 1


def test_announcement_must_come_from_the_registered_peer_id(book_parts) -> None:
    signer, clock, _ = book_parts
    registry = {signer.address: "12D3KooWPeer"}
    book = AnnouncementBook(BASE, registry.__contains__, 5, clock, registered_peer_id=registry.get)
    book.accept(encode_announcement(make_ann(signer, clock)), "12D3KooWPeer")
    clock.now += 10
    moved = make_ann(signer, clock, seq=2, peer_id="12D3KooWElsewhere")
    with pytest.raises(AnnouncementRejected, match="not its registered peer id"):
        book.accept(encode_announcement(moved), "12D3KooWElsewhere")


def test_replays_and_floods_are_rejected(book_parts) -> None:
    signer, clock, book = book_parts
    first = encode_announcement(make_ann(signer, clock, seq=10))
    book.accept(first, None)
    clock.now += 10
    with pytest.raises(AnnouncementRejected, match="replay"):
        book.accept(encode_announcement(make_ann(signer, clock, seq=10)), None)
    clock.now += 1
    book.accept(encode_announcement(make_ann(signer, clock, seq=11)), None)
    clock.now += 1
    with pytest.raises(AnnouncementRejected, match="more often"):
        book.accept(encode_announcement(make_ann(signer, clock, seq=12)), None)
    assert [a.seq for a in book.current()] == [11]


def test_oversized_announcement_is_rejected(book_parts) -> None:
    signer, clock, book = book_parts
    many = tuple(RAW_CID + str(i) for i in range(600))
    with pytest.raises(AnnouncementRejected, match="too many"):
        book.accept(encode_announcement(make_ann(signer, clock, host_adapters=many)), None)
    with pytest.raises(AnnouncementRejected, match="bytes is over"):
        book.accept(b"{" + b" " * 70_000 + b"}", None)


def test_topic_is_per_base_model() -> None:
    assert topic_for(BASE) != topic_for(base_model_id("other-model"))
    with pytest.raises(ValueError, match="32-byte"):
        topic_for(b"short")


# ---- warm-aware claiming ----


def test_claim_delay() -> None:
    signer, clock = Account.create(), Clock()
    device = make_ann(signer, clock)
    host = make_ann(signer, clock, device_adapters=(), host_adapters=(RAW_CID,))
    full = make_ann(signer, clock, capacity=Capacity(0, 5, 10.0))
    queued = make_ann(signer, clock, capacity=Capacity(1, 2, 10.0, wait_s=8.0))
    now = clock.now
    assert claim_delay(RAW_CID, False, [device], now, backoff_s=2) == 2
    assert claim_delay(RAW_CID, False, [host], now, backoff_s=2) == 1
    assert claim_delay(RAW_CID, False, [host, device], now, backoff_s=2) == 2
    assert claim_delay(RAW_CID, True, [device], now, backoff_s=2) == 0  # we are warm ourselves
    assert claim_delay(RAW_CID, False, [], now) == 0  # no warm peer: claim at once
    assert claim_delay("bafkreiother", False, [device], now) == 0
    assert claim_delay(RAW_CID, False, [full], now) == 0  # warm but no free slot
    # warm, but the job would wait 8 s there; here it starts after a 5 s cold start
    assert claim_delay(RAW_CID, False, [queued], now, cold_start_s=5) == 0
    # ... unless this node is busy too: 8 s there beats 4 s of own queue + 5 s cold start
    assert claim_delay(RAW_CID, False, [queued], now, backoff_s=2, cold_start_s=5, self_wait_s=4) == 2
    assert claim_delay(RAW_CID, False, [device], now + 31) == 0  # stale
    assert claim_delay(RAW_CID, False, [device], now, self_address=signer.address) == 0
    with pytest.raises(ValueError):
        claim_delay(RAW_CID, False, [], now, backoff_s=-1)
    with pytest.raises(ValueError):
        claim_delay(RAW_CID, False, [], now, self_wait_s=-1)


# ---- identity and config ----


def test_identity_is_persisted_and_protected(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "p2p.key"
    first = peer_id_of(load_or_create_identity(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert peer_id_of(load_or_create_identity(path)) == first and first.startswith("12D3KooW")
    os.chmod(path, 0o644)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        load_or_create_identity(path)
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(IdentityFileError, match="32-byte"):
        load_or_create_identity(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen": "127.0.0.1:4001"}, "not a multiaddr"),
        ({"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]}, "/p2p/<peer id>"),
        ({"announce_ttl_s": 5, "announce_interval_s": 10}, "announce_ttl_s"),
        ({"max_message_bytes": 1024}, "max_message_bytes"),
        ({"per_peer_inflight": 0}, "per_peer_inflight"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        P2PConfig(identity_path=tmp_path / "k", **changes)
