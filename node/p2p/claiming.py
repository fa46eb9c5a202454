"""Warm-aware claiming: yield a job for a bounded time to a peer that holds its adapter warm.

Pure function so the daemon's admission step and the benchmark use the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable

from node.p2p.announcements import PeerAnnouncement

DEFAULT_WARM_BACKOFF_S = 2.0
# Fetch + verify + validate + load of a typical adapter when not cached; the daemon should pass its own
# measured figure.
DEFAULT_COLD_START_S = 5.0
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
    cold_start_s: float = DEFAULT_COLD_START_S,
    self_wait_s: float = 0.0,
) -> float:
    """Seconds to wait before claiming. If the job is still unclaimed after the delay, claim it.

    0 when this node holds the adapter warm, or when no fresh announcement of another registered peer holds
    it warm *and* would start it sooner: a peer qualifies only with a free slot and an announced `wait_s`
    below this node's own wait plus its cold start (`self_wait_s + cold_start_s`), since a warm job queued
    behind a busy peer's work can finish later than a cold start here. Otherwise `backoff_s` when a
    qualifying peer has the adapter in a device slot, `backoff_s * HOST_TIER_FACTOR` when the best one has
    it only in host memory."""
    if backoff_s < 0 or cold_start_s < 0 or self_wait_s < 0:
        raise ValueError("backoff_s, cold_start_s and self_wait_s must be >= 0")
    if self_is_warm:
        return 0.0
    best = 0.0
    for ann in announcements:
        cap = ann.capacity
        if ann.address == self_address or ann.expires_at() <= now or cap.free_slots <= 0:
            continue
        if cap.wait_s >= self_wait_s + cold_start_s:
            continue
        if job_adapter_cid in ann.device_adapters:
            return backoff_s
        if job_adapter_cid in ann.host_adapters:
            best = backoff_s * HOST_TIER_FACTOR
    return best
