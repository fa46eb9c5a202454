"""BitswapSource: peers as a BlockSource for inference.ipfs.fetcher, tried before any gateway."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from inference.ipfs.sources import MAX_BLOCK_SIZE, SourceStats
from node.p2p.announcements import PeerAnnouncement
from node.p2p.blocks import verify_block
from node.p2p.errors import BadBlockError, BlockUnavailableError, MessageTooLargeError

if TYPE_CHECKING:
    from node.p2p.node import P2PNode

log = logging.getLogger(__name__)


class BitswapSource:
    """`async get_block(cid) -> bytes` over bitswap from the given peers, in order, skipping banned ones.
    A peer that serves a wrong block is dropped by the node and the next one is asked; when none has the
    block, BlockUnavailableError tells the fetcher to move on to its next source."""

    def __init__(
        self,
        node: P2PNode,
        peers: Sequence[PeerAnnouncement | str | tuple[str, tuple[str, ...]]],
        *,
        name: str = "bitswap",
    ) -> None:
        """`peers`: announcements, bare peer ids (already connected), or (peer id, dialable multiaddrs)."""
        self._node = node
        self.name = name
        self.stats = SourceStats()
        self._peers: list[tuple[str, tuple[str, ...]]] = [
            (p.peer_id, p.addrs) if isinstance(p, PeerAnnouncement) else (p, ()) if isinstance(p, str) else p
            for p in peers
        ]
        self._peers = [(pid, addrs) for pid, addrs in self._peers if pid != node.peer_id]

    @classmethod
    def for_adapter(cls, node: P2PNode, adapter_cid: str) -> BitswapSource:
        """Source over the registered peers whose fresh announcements hold `adapter_cid` warm."""
        return cls(node, node.warm_peers(adapter_cid))

    @property
    def peer_ids(self) -> list[str]:
        return [pid for pid, _ in self._peers]

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        reasons: list[str] = []
        for index, (peer_id, addrs) in enumerate(self._peers):
            if self._node.is_banned(peer_id):
                continue
            try:
                data = await self._node.get_block(peer_id, cid, addrs)
                verify_block(cid, data)
            except BadBlockError as exc:
                log.warning("bitswap: peer %s served a bad block for %s: %s", peer_id, cid, exc)
                reasons.append(f"{peer_id}: bad block")
                continue
            except BlockUnavailableError as exc:
                reasons.append(f"{peer_id}: {exc}")
                continue
            if len(data) > max_size:
                size = len(data)
                raise MessageTooLargeError(f"peer {peer_id}: block {cid} has {size} bytes, limit {max_size}")
            if index:  # ask the peer that had this block first next time
                self._peers.insert(0, self._peers.pop(index))
            return data
        detail = "; ".join(reasons) or "no usable peers (none announced it, or all are banned)"
        raise BlockUnavailableError(f"block {cid} not available from peers: {detail}")
