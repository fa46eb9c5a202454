"""The daemon's libp2p host: gossip of signed announcements and bitswap serving/fetching, in a trio thread.

Everything public here is called from asyncio; the trio side is reached only through TrioThread.call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import multiaddr
import trio
from eth_account.signers.local import LocalAccount
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node.p2p.announcements import (
    AnnouncementBook,
    AnnouncementRejected,
    Capacity,
    PeerAnnouncement,
    encode_announcement,
    sign_announcement,
    topic_for,
)
from node.p2p.bitswap import BitswapEngine, BitswapStats, ReadableBlockStore
from node.p2p.config import P2PConfig
from node.p2p.errors import BadBlockError, BlockUnavailableError
from node.p2p.identity import load_or_create_identity, peer_id_of
from node.p2p.trio_bridge import TrioThread

log = logging.getLogger(__name__)
GOSSIPSUB_PROTOCOLS = [TProtocol("/meshsub/1.1.0"), TProtocol("/meshsub/1.0.0")]


class _ConnectionWatcher(INotifee):
    """Closes any connection, inbound or outbound, to a peer banned for serving bad data, and lets bitswap
    forget a peer's state when its last connection closes."""

    def __init__(
        self, is_banned: Callable[[str], bool], on_gone: Callable[[ID], None], nursery: trio.Nursery
    ) -> None:
        self._is_banned, self._on_gone, self._nursery = is_banned, on_gone, nursery

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self._is_banned(peer.to_base58()):
            log.info("p2p: refusing connection of banned peer %s", peer)
            self._nursery.start_soon(network.close_peer, peer)

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if not network.get_connections(peer):
            self._on_gone(peer)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


@dataclass
class GossipStats:
    accepted: int = 0
    rejected: int = 0
    published: int = 0


class P2PNode:
    def __init__(
        self,
        config: P2PConfig,
        blockstore: ReadableBlockStore,
        signer: LocalAccount,
        base_model_id: bytes,
        is_registered: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
        registered_peer_id: Callable[[str], str | None] | None = None,
    ) -> None:
        """`is_registered(address)`: registered and staked in NodeRegistry. `registered_peer_id(address)`,
        if given: the peer id that address registered; announcements from any other peer id are ignored."""
        self.config = config
        self._blockstore = blockstore
        self._signer = signer
        self._base_model_id = base_model_id
        self.topic = topic_for(base_model_id)
        self._clock = clock
        self._key_pair = load_or_create_identity(config.identity_path)
        self.peer_id = peer_id_of(self._key_pair)
        # A node announcing at the configured interval is never limited; one at twice the rate is.
        self._book = AnnouncementBook(
            base_model_id, is_registered, config.announce_interval_s / 2, clock, registered_peer_id
        )
        self._book_lock = threading.Lock()
        self._banned: dict[str, float] = {}
        self._seq = 0
        self._last_announce = float("-inf")
        self._trio = TrioThread(f"p2p-{self.peer_id[-6:]}")
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._bitswap: BitswapEngine | None = None
        self.listen_addrs: list[str] = []
        self.gossip_stats = GossipStats()

    @property
    def address(self) -> str:
        """The eth address that signs this node's announcements (its on-chain signing key)."""
        return self._signer.address

    # ---- lifecycle ----

    async def start(self) -> None:
        """Start the host, join the base model's topic and dial the bootstrap peers."""
        await self._trio.start(self._setup)

    async def stop(self) -> None:
        """Close every connection and end the trio thread; call it from the daemon's SIGTERM handler."""
        await self._trio.stop()

    async def _setup(self, nursery: trio.Nursery) -> None:
        listen = multiaddr.Multiaddr(self.config.listen)
        announce = [multiaddr.Multiaddr(a) for a in self.config.announce_addrs] or None
        host = new_host(key_pair=self._key_pair, listen_addrs=[listen], announce_addrs=announce)
        gossipsub = GossipSub(
            protocols=GOSSIPSUB_PROTOCOLS,
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=self.config.gossip_heartbeat_s,
        )
        pubsub = Pubsub(host, gossipsub, strict_signing=True)
        started = trio.Event()

        async def run_services() -> None:
            async with (
                host.run(listen_addrs=[listen]),
                background_trio_service(pubsub),
                background_trio_service(gossipsub),
            ):
                await pubsub.wait_until_ready()
                pubsub.set_topic_validator(self.topic, self._validate_gossip, False)
                subscription = await pubsub.subscribe(self.topic)
                started.set()
                while True:  # accepted messages were already stored by the validator
                    await subscription.get()

        nursery.start_soon(run_services)
        await started.wait()
        self._host, self._pubsub = host, pubsub
        self._bitswap = BitswapEngine(host, self._blockstore, self.config, self._drop_peer, self.is_banned)
        host.get_network().register_notifee(
            _ConnectionWatcher(self.is_banned, self._bitswap.forget_peer, nursery)
        )
        self._bitswap.register()
        self.listen_addrs = [str(a) for a in host.get_addrs()]
        for addr in self.config.bootstrap:
            try:
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
            except Exception as exc:
                log.warning("p2p: bootstrap peer %s unreachable: %s", addr, exc)

    # ---- gossip ----

    def _validate_gossip(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        author = ID(msg.from_id).to_base58()
        if author == self.peer_id:
            return True
        try:
            with self._book_lock:
                ann = self._book.accept(msg.data, author)
        except AnnouncementRejected as exc:
            self.gossip_stats.rejected += 1
            log.debug("p2p: ignored announcement from %s via %s: %s", author, forwarder, exc)
            return False
        self.gossip_stats.accepted += 1
        log.debug("p2p: announcement seq %d from %s (%s)", ann.seq, ann.address, author)
        return True

    async def announce(
        self, capacity: Capacity, warm_adapters: Sequence[str], host_adapters: Sequence[str] = ()
    ) -> PeerAnnouncement:
        """Sign and publish this node's capacity and warm adapters (device slots, then host tier)."""
        now = self._clock()
        if now - self._last_announce < self.config.announce_interval_s / 2:
            raise ValueError(
                f"announce() called again within {self.config.announce_interval_s / 2}s; peers would drop it "
                "as spam: announce every p2p.announce_interval_s"
            )
        self._seq = max(self._seq + 1, int(now * 1000))  # stays increasing across restarts
        ann = sign_announcement(
            self._signer,
            PeerAnnouncement(
                address=self._signer.address,
                peer_id=self.peer_id,
                base_model_id=self._base_model_id.hex(),
                seq=self._seq,
                issued_at=now,
                ttl_s=self.config.announce_ttl_s,
                capacity=capacity,
                device_adapters=tuple(warm_adapters),
                host_adapters=tuple(host_adapters),
                addrs=tuple(self.listen_addrs),
            ),
        )
        await self.publish_raw(encode_announcement(ann))
        self._last_announce = now
        return ann

    async def publish_raw(self, data: bytes) -> None:
        """Publish bytes on the topic as they are (announce() is the normal path; tests forge with this)."""

        async def publish() -> None:
            assert self._pubsub is not None
            await self._pubsub.publish(self.topic, data)

        await self._trio.call(publish)
        self.gossip_stats.published += 1

    def announcements(self) -> list[PeerAnnouncement]:
        with self._book_lock:
            return self._book.current()

    def warm_peers(self, adapter_cid: str) -> list[PeerAnnouncement]:
        """Fresh announcements of registered peers holding the adapter warm, best first."""
        with self._book_lock:
            return [a for a in self._book.warm_peers(adapter_cid) if not self.is_banned(a.peer_id)]

    # ---- peers ----

    async def connect(self, addr: str) -> None:
        """Dial a peer by a multiaddr ending in /p2p/<peer id>."""

        async def dial() -> None:
            assert self._host is not None
            await self._host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))

        await self._trio.call(dial)

    async def connected_peers(self) -> list[str]:
        async def peers() -> list[str]:
            assert self._host is not None
            return [p.to_base58() for p in self._host.get_connected_peers()]

        return await self._trio.call(peers)

    def is_banned(self, peer_id: str) -> bool:
        until = self._banned.get(peer_id)
        return until is not None and until > time.monotonic()

    async def _drop_peer(self, peer: ID, reason: str) -> None:
        log.warning("p2p: dropping peer %s for %s: %s", peer, self.config.bad_peer_ban_s, reason)
        self._banned[peer.to_base58()] = time.monotonic() + self.config.bad_peer_ban_s
        if self._host is not None:
            with trio.move_on_after(2):
                await self._host.disconnect(peer)
        # only now wake the waiters, so nobody observes "dropped" while the peer is still connected
        if self._bitswap is not None:
            self._bitswap.fail_peer_wants(peer, BadBlockError(f"peer {peer} was dropped: {reason}"))

    # ---- bitswap ----

    @property
    def bitswap_stats(self) -> BitswapStats:
        return self._bitswap.stats if self._bitswap is not None else BitswapStats()

    async def get_block(self, peer_id: str, cid: str, addrs: Sequence[str] = ()) -> bytes:
        """Fetch one block from one peer over bitswap; the bytes are verified against `cid`.
        Raises BadBlockError (peer dropped) or BlockUnavailableError."""
        if self.is_banned(peer_id):
            raise BlockUnavailableError(f"peer {peer_id} is banned for serving bad data")
        return await self._trio.call(self._get_block, peer_id, cid, tuple(addrs))

    async def _get_block(self, peer_id: str, cid: str, addrs: tuple[str, ...]) -> bytes:
        assert self._host is not None and self._bitswap is not None
        peer = ID.from_base58(peer_id)
        if peer not in self._host.get_connected_peers():
            maddrs = [multiaddr.Multiaddr(a).decapsulate_code(multiaddr.protocols.P_P2P) for a in addrs]
            try:
                with trio.fail_after(self.config.block_timeout_s):
                    await self._host.connect(PeerInfo(peer, maddrs))
            except Exception as exc:
                raise BlockUnavailableError(f"cannot reach peer {peer_id}: {exc}") from exc
        return await self._bitswap.want_block(peer, cid, self.config.block_timeout_s)
