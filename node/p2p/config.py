"""Configuration of the libp2p side of the daemon (`[p2p]` in the node config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import multiaddr


@dataclass(frozen=True)
class P2PConfig:
    identity_path: Path  # ed25519 libp2p key, created on first start with mode 0600
    listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: list[str] = field(default_factory=list)  # full multiaddrs ending in /p2p/<peer id>
    announce_addrs: list[str] = field(default_factory=list)  # public addrs to advertise (behind NAT, 0.0.0.0)
    max_block_bytes: int = 2 * 1024 * 1024  # bitswap's own 2 MiB block ceiling; default chunks are 256 KiB
    max_message_bytes: int = 4 * 1024 * 1024  # one bitswap frame, in and out
    per_peer_inflight: int = 64  # want entries one peer may have us working on at once
    per_peer_bytes_per_s: int = 32 * 1024 * 1024  # bytes served to one peer per second (token bucket)
    block_timeout_s: float = 10.0  # how long a fetch waits for one peer's answer before trying the next
    bad_peer_ban_s: float = 600.0  # a peer that served a wrong block is refused this long
    announce_interval_s: float = 10.0
    announce_ttl_s: float = 30.0
    gossip_heartbeat_s: int = 1

    def __post_init__(self) -> None:
        try:
            multiaddr.Multiaddr(self.listen)
        except Exception as exc:
            message = f"p2p.listen {self.listen!r} is not a multiaddr, e.g. /ip4/0.0.0.0/tcp/4001"
            raise ValueError(message) from exc
        for addr in self.announce_addrs:
            try:
                multiaddr.Multiaddr(addr)
            except Exception as exc:
                raise ValueError(f"p2p.announce_addrs entry {addr!r} is not a multiaddr") from exc
        for addr in self.bootstrap:
            try:
                parsed = multiaddr.Multiaddr(addr)
                parsed.value_for_protocol("p2p")
            except Exception as exc:
                raise ValueError(
                    f"p2p.bootstrap entry {addr!r} must be a multiaddr ending in /p2p/<peer id>"
                ) from exc
        if self.max_block_bytes <= 0 or self.max_message_bytes < self.max_block_bytes + 1024:
            raise ValueError("p2p.max_message_bytes must exceed p2p.max_block_bytes by at least 1 KiB")
        if self.per_peer_inflight < 1 or self.per_peer_bytes_per_s < self.max_block_bytes:
            raise ValueError("p2p.per_peer_inflight must be >= 1 and per_peer_bytes_per_s >= max_block_bytes")
        if self.announce_ttl_s <= self.announce_interval_s:
            raise ValueError("p2p.announce_ttl_s must be longer than p2p.announce_interval_s")
