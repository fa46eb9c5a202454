"""Warm-aware claiming: yield a job for a bounded time to a peer that holds its adapter warm.

Pure function so the daemon's admission step and the benchmark use the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from node.p2p.announcements import PeerAnnouncement

DEFAULT_WARM_BACKOFF_S = 2.0
# A peer with the adapter only in host memory still beats a cold start (disk/network fetch + validation),
# but by less than one with it in a device slot, so we wait less for it.
HOST_TIER_FACTOR = 0.5


def claim_delay(
    job_adapter_cid: str,
    self_is_warm: bool,
    announcements: Iterable[PeerAnnouncement],
    now: float,
    *,
    backoff_s: float = DEFAULT_WARM_BACKOFF_S,
    self_address: str | None = None,
) -> float:
    """Seconds to wait before claiming: 0 when this node is warm or no fresh, registered peer with room
    holds the adapter warm; `backoff_s` when one has it in a device slot; `backoff_s * HOST_TIER_FACTOR` when
    the best one has it only in host memory. If the job is still unclaimed after the delay, claim it."""
    if backoff_s < 0:
        raise ValueError("backoff_s must be >= 0")
    if self_is_warm:
        return 0.0
    best = 0.0
    for ann in announcements:
        if ann.address == self_address or ann.expires_at() <= now or not ann.capacity.has_room():
            continue
        if job_adapter_cid in ann.device_adapters:
            return backoff_s
        if job_adapter_cid in ann.host_adapters:
            best = backoff_s * HOST_TIER_FACTOR
    return best
