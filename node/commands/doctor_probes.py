"""Reachability probes for `openlora doctor`: an IPFS block source serves a known block (verified against
its CID); a libp2p peer's TCP address accepts connections."""

from __future__ import annotations

import asyncio
import socket

from node.config import peer_of

EMPTY_FILE_CID = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"  # a UnixFS empty file, CIDv0


async def fetch_any(source, cids: list[str]) -> tuple[bool, str]:
    """Fetch the first of `cids` the source serves and verify it against its CID."""
    import aiohttp

    from inference.ipfs.cid import parse_cid

    reasons = []
    try:
        for cid in cids:
            try:
                data = await asyncio.wait_for(source.get_block(cid), 15)
            except Exception as e:
                if isinstance(e.__cause__, aiohttp.ClientConnectionError):
                    return False, f"unreachable ({type(e.__cause__).__name__})"
                reasons.append(f"{cid}: {e}")
                continue
            if not parse_cid(cid).matches(data):
                return False, f"served bytes for {cid} that do not hash to it"
            return True, f"served block {cid} ({len(data)} bytes, verified)"
        return False, "answers, but serves none of the blocks asked for: " + "; ".join(reasons)
    finally:
        await source.close()


def tcp_reachable(addr: str) -> tuple[bool, str, str]:
    import multiaddr

    peer_of(addr)  # validated at config load
    parts = [str(p).split("/", 2)[1:] for p in multiaddr.Multiaddr(addr).split()]
    hosts = [v for k, v in parts if k in ("ip4", "ip6", "dns4", "dns6", "dns")]
    ports = [int(v) for k, v in parts if k == "tcp"]
    if not hosts or not ports:
        return False, "not a TCP multiaddr", "use /ip4/HOST/tcp/PORT/p2p/ID"
    try:
        with socket.create_connection((hosts[0], ports[0]), timeout=5):
            return True, f"TCP {hosts[0]}:{ports[0]} accepts connections", ""
    except OSError as e:
        fix = "start the peer (e.g. `ipfs daemon`) or fix [ipfs].peers"
        return False, f"TCP {hosts[0]}:{ports[0]}: {e.strerror or e}", fix
