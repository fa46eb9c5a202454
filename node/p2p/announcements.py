"""Signed capacity / warm-adapter announcements gossiped on one topic per base model.

The body is canonical JSON (sorted keys, no spaces) signed with EIP-191 (`encode_defunct`) by the node's
on-chain signing key, so any peer can recover the address and check it against the NodeRegistry.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount

from inference.validate.strict_json import loads_object

ANNOUNCEMENT_VERSION = 1
MAX_ANNOUNCEMENT_BYTES = 64 * 1024
MAX_WARM_ADAPTERS = 512
MAX_ADDRS = 16
# Clock skew tolerated for `issued_at` in the future.
MAX_FUTURE_SKEW_S = 30.0


def topic_for(base_model_id: bytes) -> str:
    """The gossip topic of every node serving one base model."""
    if len(base_model_id) != 32:
        raise ValueError("base_model_id must be the 32-byte keccak id from inference.models.base_model_id")
    return f"/openlora/announce/1/{base_model_id.hex()}"


@dataclass(frozen=True)
class Capacity:
    free_slots: int  # LoRA device slots not pinned by a running job
    queue_depth: int  # jobs admitted and not yet finished
    tokens_per_s: float  # recent decode throughput
    wait_s: float = 0.0  # estimated time before a job admitted now would start (work already admitted)


@dataclass(frozen=True)
class PeerAnnouncement:
    address: str  # checksummed eth address of the node's signing key
    peer_id: str  # base58 libp2p peer id of the publishing host
    base_model_id: str  # hex, no 0x
    seq: int  # strictly increasing per address; older ones are replays
    issued_at: float  # unix seconds
    ttl_s: float
    capacity: Capacity
    device_adapters: tuple[str, ...] = ()  # adapter CIDs loaded in device LoRA slots
    host_adapters: tuple[str, ...] = ()  # adapter CIDs held in the host-memory tier
    addrs: tuple[str, ...] = ()  # multiaddrs the node listens on, so peers can dial it for bitswap
    signature: str = field(default="", compare=False)

    def body(self) -> bytes:
        data = asdict(self)
        data.pop("signature")
        data["v"] = ANNOUNCEMENT_VERSION
        # JSON types fixed here so a value given as int (ttl 30) encodes the same as it decodes (30.0)
        data["issued_at"], data["ttl_s"] = float(self.issued_at), float(self.ttl_s)
        data["seq"] = int(self.seq)
        cap = self.capacity
        data["capacity"] = {
            "free_slots": int(cap.free_slots),
            "queue_depth": int(cap.queue_depth),
            "tokens_per_s": float(cap.tokens_per_s),
            "wait_s": float(cap.wait_s),
        }
        data["device_adapters"] = list(self.device_adapters)
        data["host_adapters"] = list(self.host_adapters)
        data["addrs"] = list(self.addrs)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def expires_at(self) -> float:
        return self.issued_at + self.ttl_s

    def is_warm(self, adapter_cid: str) -> bool:
        return adapter_cid in self.device_adapters or adapter_cid in self.host_adapters


def sign_announcement(signer: LocalAccount, unsigned: PeerAnnouncement) -> PeerAnnouncement:
    if unsigned.address != signer.address:
        raise ValueError("announcement address must be the signer's address")
    signed = signer.sign_message(encode_defunct(primitive=unsigned.body()))
    return dataclasses.replace(unsigned, signature="0x" + signed.signature.hex().removeprefix("0x"))


def encode_announcement(announcement: PeerAnnouncement) -> bytes:
    payload = json.loads(announcement.body())
    payload["signature"] = announcement.signature
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


class AnnouncementRejected(Exception):
    """Why a received announcement was ignored (logged at debug level, never fatal)."""


def decode_announcement(data: bytes) -> PeerAnnouncement:
    if len(data) > MAX_ANNOUNCEMENT_BYTES:
        raise AnnouncementRejected(f"announcement of {len(data)} bytes is over {MAX_ANNOUNCEMENT_BYTES}")
    try:
        raw = loads_object(data)  # from a peer: bounded depth, no duplicate keys
        if raw.pop("v") != ANNOUNCEMENT_VERSION:
            raise AnnouncementRejected("unknown announcement version")
        cap = raw.pop("capacity")
        ann = PeerAnnouncement(
            address=str(raw["address"]),
            peer_id=str(raw["peer_id"]),
            base_model_id=str(raw["base_model_id"]),
            seq=int(raw["seq"]),
            issued_at=float(raw["issued_at"]),
            ttl_s=float(raw["ttl_s"]),
            capacity=Capacity(
                int(cap["free_slots"]),
                int(cap["queue_depth"]),
                float(cap["tokens_per_s"]),
                float(cap["wait_s"]),
            ),
            device_adapters=tuple(str(c) for c in raw["device_adapters"]),
            host_adapters=tuple(str(c) for c in raw["host_adapters"]),
            addrs=tuple(str(a) for a in raw["addrs"]),
            signature=str(raw["signature"]),
        )
    except AnnouncementRejected:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AnnouncementRejected(f"malformed announcement: {exc}") from exc
    if len(ann.device_adapters) + len(ann.host_adapters) > MAX_WARM_ADAPTERS or len(ann.addrs) > MAX_ADDRS:
        raise AnnouncementRejected("announcement lists too many adapters or addresses")
    # Only the canonical encoding is accepted, so no bytes outside the signed body can ride along.
    if encode_announcement(ann) != data:
        raise AnnouncementRejected("announcement is not canonically encoded")
    return ann


def recover_signer(announcement: PeerAnnouncement) -> str:
    try:
        return Account.recover_message(
            encode_defunct(primitive=announcement.body()), signature=announcement.signature
        )
    except Exception as exc:
        raise AnnouncementRejected(f"bad signature: {exc}") from exc


@dataclass
class _SenderState:
    last_seq: int
    last_accepted_at: float


class AnnouncementBook:
    """Verified announcements by signer address: checks signature, registration, topic, freshness, replay
    and rate; keeps the newest per address; drops expired ones on read."""

    def __init__(
        self,
        base_model_id: bytes,
        is_registered: Callable[[str], bool],
        min_interval_s: float,
        clock: Callable[[], float] = time.time,
        registered_peer_id: Callable[[str], str | None] | None = None,
    ) -> None:
        self._registered_peer_id = registered_peer_id
        self._base_model_hex = base_model_id.hex()
        self._is_registered = is_registered
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._latest: dict[str, PeerAnnouncement] = {}
        self._senders: dict[str, _SenderState] = {}
        self.rejected = 0

    def accept(self, data: bytes, from_peer_id: str | None) -> PeerAnnouncement:
        """Verify and store; raise AnnouncementRejected with the reason otherwise."""
        try:
            ann = decode_announcement(data)
            self._check(ann, from_peer_id)
        except AnnouncementRejected:
            self.rejected += 1
            raise
        self._latest[ann.address] = ann
        self._senders[ann.address] = _SenderState(ann.seq, self._clock())
        return ann

    def _check(self, ann: PeerAnnouncement, from_peer_id: str | None) -> None:
        now = self._clock()
        if ann.base_model_id != self._base_model_hex:
            raise AnnouncementRejected("announcement is for another base model")
        if from_peer_id is not None and ann.peer_id != from_peer_id:
            raise AnnouncementRejected("announcement peer id differs from the gossip message's author")
        if ann.expires_at() <= now:
            raise AnnouncementRejected("announcement expired")
        if ann.issued_at > now + MAX_FUTURE_SKEW_S:
            raise AnnouncementRejected("announcement issued in the future; check the sender's clock")
        signer = recover_signer(ann)
        if signer != ann.address:
            claimed = ann.address
            raise AnnouncementRejected(f"signature is by {signer}, not by the announced address {claimed}")
        if not self._is_registered(signer):
            raise AnnouncementRejected(f"{signer} is not a registered, staked node")
        if self._registered_peer_id is not None and self._registered_peer_id(signer) != ann.peer_id:
            raise AnnouncementRejected(
                f"{signer} announces from peer {ann.peer_id}, not its registered peer id"
            )
        state = self._senders.get(signer)
        if state is not None:
            if ann.seq <= state.last_seq:
                raise AnnouncementRejected("announcement is older than one already seen (replay)")
            if now - state.last_accepted_at < self._min_interval_s:
                interval = self._min_interval_s
                raise AnnouncementRejected(f"{signer} announces more often than every {interval} s")

    def current(self) -> list[PeerAnnouncement]:
        now = self._clock()
        for address in [a for a, ann in self._latest.items() if ann.expires_at() <= now]:
            del self._latest[address]
        return list(self._latest.values())

    def warm_peers(self, adapter_cid: str) -> list[PeerAnnouncement]:
        """Announcements that hold the adapter warm, device slots first, then most free capacity."""
        warm = [a for a in self.current() if a.is_warm(adapter_cid)]

        def rank(a: PeerAnnouncement) -> tuple[bool, int, int]:
            return (adapter_cid not in a.device_adapters, -a.capacity.free_slots, a.capacity.queue_depth)

        warm.sort(key=rank)
        return warm
