"""`[ipfs].peers`: fixed bitswap peers (your own Kubo node, a seeder) asked for adapter blocks directly,
dialed by their multiaddr, with no gossip or registration needed. Their blocks are verified like any other
source's: each against its CID, the weights file against the registry's sha256.

With `[p2p].enabled` the daemon's libp2p host dials them; otherwise a private, fetch-only host is started
on first use (listening on 127.0.0.1 only, no bootstrap, no announcements) and stopped with the store."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from eth_account.signers.local import LocalAccount

from inference.ipfs.sources import MAX_BLOCK_SIZE, SourceStats
from node.config import peer_of
from node.p2p.config import P2PConfig
from node.p2p.node import P2PNode
from node.p2p.source import BitswapSource

log = logging.getLogger(__name__)
FETCH_ONLY_MODEL_ID = bytes(32)  # a fetch-only host joins no model's topic that matters


class _NoBlocks:
    """The fetch-only host serves nothing."""

    def has(self, cid: str) -> bool:
        return False

    def get(self, cid: str) -> bytes | None:
        return None


class DirectPeersSource:
    """A BlockSource over bitswap from the configured peers, in order."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        node: P2PNode | None = None,
        identity_path: Path | None = None,
        signer: LocalAccount | None = None,
        block_timeout_s: float = 10.0,
    ) -> None:
        if node is None and (identity_path is None or signer is None):
            raise ValueError("DirectPeersSource needs the daemon's P2PNode, or an identity and a signer")
        self.name = "ipfs-peers"
        self.stats = SourceStats()
        self._peers = [(peer_of(a), (a,)) for a in peers]
        self._node = node
        self._own = node is None
        self._identity_path, self._signer, self._timeout = identity_path, signer, block_timeout_s
        self._source: BitswapSource | None = None
        self._lock = asyncio.Lock()

    def _bitswap_source(self) -> BitswapSource:
        if self._source is None:
            assert self._node is not None
            self._source = BitswapSource(self._node, self._peers, name=self.name)
            self._source.stats = self.stats
        return self._source

    async def _ready(self) -> BitswapSource:
        async with self._lock:
            if self._node is None:
                assert self._identity_path is not None and self._signer is not None
                config = P2PConfig(
                    identity_path=self._identity_path,
                    listen="/ip4/127.0.0.1/tcp/0",
                    block_timeout_s=self._timeout,
                )
                node = P2PNode(config, _NoBlocks(), self._signer, FETCH_ONLY_MODEL_ID, lambda _: False)
                await node.start()
                log.info("ipfs peers: fetch-only libp2p host %s started", node.peer_id)
                self._node = node
            return self._bitswap_source()

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        source = await self._ready()
        return await source.get_block(cid, max_size=max_size)

    async def close(self) -> None:
        async with self._lock:
            if self._own and self._node is not None:
                await self._node.stop()
                self._node = None
                self._source = None
