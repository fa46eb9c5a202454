"""The node's libp2p identity: an ed25519 key persisted so its peer id (registered on chain) is stable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from node.p2p.errors import IdentityFileError

_KEY_LEN = 32


def load_or_create_identity(path: Path) -> KeyPair:
    """Load the raw 32-byte ed25519 seed at `path`, or create it (mode 0600) when the file does not exist."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.new()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key.to_bytes()[:_KEY_LEN])
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityFileError(f"{path} is readable by other users; run `chmod 600 {path}`")
    raw = path.read_bytes()
    if len(raw) != _KEY_LEN:
        raise IdentityFileError(
            f"{path} holds {len(raw)} bytes, not a 32-byte ed25519 seed; move it away to create a new "
            "identity (the new peer id must then be registered on chain again)"
        )
    key = Ed25519PrivateKey.from_bytes(raw)
    return KeyPair(key, key.get_public_key())


def peer_id_of(key_pair: KeyPair) -> str:
    return ID.from_pubkey(key_pair.public_key).to_base58()
