"""The node's libp2p peer id, from its persisted identity key (created on first use)."""

from __future__ import annotations

from pathlib import Path


def node_peer_id(identity_path: Path) -> str:
    from node.p2p.identity import load_or_create_identity, peer_id_of

    return peer_id_of(load_or_create_identity(identity_path))
