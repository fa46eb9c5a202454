"""Bitswap 1.2.0 over libp2p (runs in the P2P node's trio thread).

Like boxo, each side sends its messages on its own outbound stream; every inbound stream is only read.
Serving: wanted blocks come from the node's block store; per peer, at most `per_peer_inflight` entries of a
message are worked on and served bytes pass a token bucket, so one peer cannot take all memory or bandwidth.
Fetching: a payload block's CID is rebuilt from its prefix by hashing its data, so it can only answer the want
for that exact CID. A peer that sends a block nobody asked it for while we wait on it, a block over the size
limit, or a malformed or oversized message is reported as bad: the node drops and bans it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamError
from libp2p.peer.id import ID

from node.p2p.bitswap_message import (
    PROTOCOL_ID,
    BitswapMessage,
    BlockPresence,
    PayloadBlock,
    PresenceType,
    WantEntry,
    WantType,
    check_frame_length,
    decode_uvarint,
    frame,
)
from node.p2p.blocks import cid_from_prefix, cid_key, cid_prefix, parse_cid
from node.p2p.config import P2PConfig
from node.p2p.errors import BadBlockError, BlockUnavailableError, MessageTooLargeError

log = logging.getLogger(__name__)
BITSWAP_PROTOCOL = TProtocol(PROTOCOL_ID)
# bitswap 1.0.0 blocks carry no prefix: they are CIDv0 (dag-pb, sha2-256).
_CIDV0_PREFIX = bytes([0, 0x70, 0x12, 0x20])


class ReadableBlockStore(Protocol):
    """What bitswap needs from inference.ipfs.blockstore.BlockStore."""

    def has(self, cid: str) -> bool: ...

    def get(self, cid: str) -> bytes | None: ...


@dataclass
class _Want:
    done: trio.Event = field(default_factory=trio.Event)
    data: bytes | None = None
    error: Exception | None = None
    waiters: int = 0


# Wants given up on (timeout, cancel) are remembered this long, so the answer arriving late is not
# mistaken for a block nobody asked for.
_LATE_ANSWER_WINDOW_S = 120.0
_MAX_REMEMBERED_WANTS = 4096


@dataclass
class BitswapStats:
    blocks_served: int = 0
    bytes_served: int = 0
    blocks_received: int = 0
    dont_have_sent: int = 0
    entries_dropped_over_limit: int = 0
    bad_peers: int = 0


class _TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()

    async def take(self, amount: int) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= amount:
                self.tokens -= amount
                return
            await trio.sleep((amount - self.tokens) / self.rate)


class _FrameReader:
    def __init__(self, stream: INetStream, limit: int) -> None:
        self._stream, self._limit, self._buf = stream, limit, bytearray()

    async def _fill(self, need: int) -> None:
        while len(self._buf) < need:
            chunk = await self._stream.read(max(need - len(self._buf), 64 * 1024))
            if not chunk:
                raise EOFError
            self._buf += chunk

    async def next(self) -> bytes:
        pos = 0
        while True:  # a varint is at most 10 bytes
            await self._fill(pos + 1)
            if not self._buf[pos] & 0x80 or pos >= 9:
                break
            pos += 1
        length, start = decode_uvarint(bytes(self._buf[: pos + 1]))
        check_frame_length(length, self._limit)
        await self._fill(start + length)
        body = bytes(self._buf[start : start + length])
        del self._buf[: start + length]
        return body


class BitswapEngine:
    def __init__(
        self,
        host: IHost,
        blockstore: ReadableBlockStore,
        config: P2PConfig,
        on_bad_peer: Callable[[ID, str], Awaitable[None]],
        is_banned: Callable[[str], bool],
    ) -> None:
        self._is_banned = is_banned
        self._host = host
        self._store = blockstore
        self._config = config
        self._on_bad_peer = on_bad_peer
        self._wants: dict[tuple[ID, str], _Want] = {}
        self._given_up: dict[tuple[ID, str], float] = {}
        self._outbound: dict[ID, INetStream] = {}
        self._send_locks: dict[ID, trio.Lock] = {}
        self._buckets: dict[ID, _TokenBucket] = {}
        self._serving: dict[ID, trio.Lock] = {}  # one wantlist worked on per peer, however many streams
        self.stats = BitswapStats()

    def register(self) -> None:
        self._host.set_stream_handler(BITSWAP_PROTOCOL, self._handle_stream)

    # ---- fetching ----

    async def want_block(self, peer: ID, cid: str, timeout_s: float) -> bytes:
        """Ask one peer for one block; return its verified bytes, or raise BadBlockError or
        BlockUnavailableError."""
        parsed = parse_cid(cid)
        key = (peer, cid_key(parsed))
        want = self._wants.get(key)
        if want is None:
            want = self._wants[key] = _Want()
            entry = WantEntry(cid=bytes(parsed), want_type=WantType.BLOCK, send_dont_have=True)
            try:
                await self._send(peer, BitswapMessage(wantlist=[entry]))
            except Exception as exc:
                self._wants.pop(key, None)
                # callers that joined this want while it was being sent fail with it
                want.error = BlockUnavailableError(f"cannot send want for {parsed} to {peer}: {exc}")
                want.done.set()
                raise want.error from exc
        want.waiters += 1
        try:
            with trio.move_on_after(timeout_s):
                await want.done.wait()
        finally:
            want.waiters -= 1
            if want.waiters == 0 and self._wants.get(key) is want:
                del self._wants[key]
                if not want.done.is_set():
                    self._remember_given_up(key)
        if want.error is not None:
            raise want.error
        if want.data is None:
            if want.waiters:
                raise BlockUnavailableError(f"peer {peer} did not answer for {parsed} within {timeout_s}s")
            with trio.move_on_after(1):
                cancel = WantEntry(cid=bytes(parsed), cancel=True)
                await self._send(peer, BitswapMessage(wantlist=[cancel]))
            raise BlockUnavailableError(f"peer {peer} did not answer for {parsed} within {timeout_s}s")
        return want.data

    def _remember_given_up(self, key: tuple[ID, str]) -> None:
        now = time.monotonic()
        self._given_up[key] = now + _LATE_ANSWER_WINDOW_S
        if len(self._given_up) > _MAX_REMEMBERED_WANTS:
            self._given_up = {k: t for k, t in self._given_up.items() if t > now}
            while len(self._given_up) > _MAX_REMEMBERED_WANTS:
                del self._given_up[next(iter(self._given_up))]

    def forget_peer(self, peer: ID) -> None:
        """Drop per-peer state once a peer has no connection left, so state does not grow with every peer."""
        self._outbound.pop(peer, None)
        self._buckets.pop(peer, None)
        for locks in (self._send_locks, self._serving):
            lock = locks.get(peer)
            if lock is not None and not lock.locked():
                del locks[peer]
        self.fail_peer_wants(peer, BlockUnavailableError(f"peer {peer} disconnected"))

    def fail_peer_wants(self, peer: ID, error: Exception) -> None:
        for (wpeer, _), want in list(self._wants.items()):
            if wpeer == peer and not want.done.is_set():
                want.error = error
                want.done.set()

    # ---- wire ----

    async def _send(self, peer: ID, message: BitswapMessage) -> None:
        data = frame(message)
        lock = self._send_locks.setdefault(peer, trio.Lock())
        async with lock:
            for attempt in (0, 1):
                stream = self._outbound.get(peer)
                try:
                    if stream is None:
                        stream = await self._host.new_stream(peer, [BITSWAP_PROTOCOL])
                        self._outbound[peer] = stream
                    await stream.write(data)
                    return
                except Exception:
                    self._outbound.pop(peer, None)
                    if attempt:
                        raise

    async def _handle_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if self._is_banned(peer.to_base58()):
            await stream.reset()
            return
        reader = _FrameReader(stream, self._config.max_message_bytes)
        try:
            while True:
                try:
                    body = await reader.next()
                except (EOFError, StreamError):
                    return
                try:
                    message = BitswapMessage.decode(body)
                except ValueError as exc:
                    raise BadBlockError(f"malformed bitswap message: {exc}") from exc
                log.debug(
                    "bitswap: from %s: %d wants, %d blocks, %d presences",
                    peer,
                    len(message.wantlist),
                    len(message.payload),
                    len(message.presences),
                )
                await self._on_message(peer, message)
        except (BadBlockError, MessageTooLargeError) as exc:
            self.stats.bad_peers += 1
            # drop (ban + disconnect) before waking the waiters: a caller that sees the error must
            # never still find the bad peer connected
            await self._on_bad_peer(peer, str(exc))
            self.fail_peer_wants(peer, BadBlockError(f"peer {peer}: {exc}"))
        finally:
            with trio.move_on_after(1):
                await stream.close()

    async def _on_message(self, peer: ID, message: BitswapMessage) -> None:
        for block in message.payload:
            self._on_block(peer, block.prefix, block.data)
        for data in message.legacy_blocks:
            self._on_block(peer, _CIDV0_PREFIX, data)
        for presence in message.presences:
            want = self._wants.get((peer, cid_key(presence.cid)))
            if want is not None and presence.type == PresenceType.DONT_HAVE and not want.done.is_set():
                want.error = BlockUnavailableError(f"peer {peer} does not have {cid_key(presence.cid)}")
                want.done.set()
        if message.wantlist:
            async with self._serving.setdefault(peer, trio.Lock()):
                await self._serve(peer, message.wantlist)

    def _on_block(self, peer: ID, prefix: bytes, data: bytes) -> None:
        if len(data) > self._config.max_block_bytes:
            limit = self._config.max_block_bytes
            raise BadBlockError(f"sent a {len(data)}-byte block, over the {limit}-byte limit")
        received = cid_from_prefix(prefix, data)
        key = cid_key(received)
        want = self._wants.get((peer, key)) or self._want_by_digest(peer, received.digest)
        if want is None:
            late = self._given_up.pop((peer, key), 0.0) > time.monotonic()
            # A block that answers nothing we asked while we wait on this peer is a lie about a wanted CID.
            if not late and any(wpeer == peer for wpeer, _ in self._wants):
                raise BadBlockError(f"sent block {key}, which matches no CID we asked it for")
            return
        self.stats.blocks_received += 1
        want.data = data
        want.done.set()

    def _want_by_digest(self, peer: ID, digest: bytes) -> _Want | None:
        """The same bytes may answer a want made under another CID version or codec (Qm... vs bafy...)."""
        for (wpeer, wkey), want in self._wants.items():
            if wpeer == peer and parse_cid(wkey).digest == digest:
                return want
        return None

    # ---- serving ----

    async def _serve(self, peer: ID, entries: list[WantEntry]) -> None:
        wanted = [e for e in entries if not e.cancel]
        limit = self._config.per_peer_inflight
        if len(wanted) > limit:
            self.stats.entries_dropped_over_limit += len(wanted) - limit
            wanted = wanted[:limit]
        bucket = self._buckets.setdefault(
            peer, _TokenBucket(self._config.per_peer_bytes_per_s, self._config.per_peer_bytes_per_s)
        )
        out = BitswapMessage()
        size = 0
        for entry in sorted(wanted, key=lambda e: -e.priority):
            try:
                cid = parse_cid(entry.cid)
            except ValueError:
                continue
            data = self._store.get(cid_key(cid)) if entry.want_type == WantType.BLOCK else None
            has = data is not None or (entry.want_type == WantType.HAVE and self._store.has(cid_key(cid)))
            if data is not None and len(data) <= self._config.max_block_bytes:
                if size + len(data) + 64 > self._config.max_message_bytes:
                    await self._send(peer, out)
                    out, size = BitswapMessage(), 0
                await bucket.take(len(data))
                out.payload.append(PayloadBlock(prefix=cid_prefix(cid), data=data))
                size += len(data) + 64
                self.stats.blocks_served += 1
                self.stats.bytes_served += len(data)
            elif has and entry.want_type == WantType.HAVE:
                out.presences.append(BlockPresence(cid=entry.cid, type=PresenceType.HAVE))
            elif entry.send_dont_have:
                out.presences.append(BlockPresence(cid=entry.cid, type=PresenceType.DONT_HAVE))
                self.stats.dont_have_sent += 1
        if out.payload or out.presences:
            await self._send(peer, out)
