"""Peer network: libp2p host in a trio thread, signed gossip of capacity and warm adapters, bitswap."""

from node.p2p.announcements import (
    AnnouncementBook,
    AnnouncementRejected,
    Capacity,
    PeerAnnouncement,
    topic_for,
)
from node.p2p.claiming import claim_delay
from node.p2p.config import P2PConfig
from node.p2p.errors import BadBlockError, BlockUnavailableError, P2PError
from node.p2p.node import P2PNode
from node.p2p.source import BitswapSource

__all__ = [
    "AnnouncementBook",
    "AnnouncementRejected",
    "BadBlockError",
    "BitswapSource",
    "BlockUnavailableError",
    "Capacity",
    "P2PConfig",
    "P2PError",
    "P2PNode",
    "PeerAnnouncement",
    "claim_delay",
    "topic_for",
]
