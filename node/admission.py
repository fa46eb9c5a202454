"""Admission control: claim only jobs this node can finish before their deadline.

A claim is a promise backed by stake: a claimed job that misses its deadline is slashed. So before
claiming, the node estimates when the job would be answered on chain:

    finish = now + cold start (adapter not warm) + committed tokens / measured tokens per second
             + one chain round trip (claim + result), all times a safety factor

and refuses the job (leaves it for other nodes) when that lands after the deadline, when the price is
below the configured minimum, or when the node already holds as many jobs as it is allowed to.
Speeds are measured: the engine's aggregate decode rate, the last cold starts, the last claim and
result round trips (exponential moving averages); the configured values are only the starting point."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdmissionPolicy:
    min_price_wei: int = 0
    max_committed_jobs: int = 16  # jobs between SEEN and POSTING at once; beyond it new jobs are skipped
    assumed_tokens_per_s: float = 20.0  # until the engine has measured its own speed
    cold_start_s: float = 5.0  # fetch + verify + validate an adapter that is not warm (until measured)
    chain_round_trip_s: float = 4.0  # claim mined + result mined (until measured)
    safety_factor: float = 1.5  # estimates are multiplied by this before comparing with the deadline


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str
    estimated_s: float  # seconds from now until the result would be on chain
    kind: str = ""  # why it was refused: price, capacity, deadline (a metric label)


class _Ewma:
    def __init__(self, initial: float, weight: float = 0.3) -> None:
        self.value = initial
        self.weight = weight
        self.samples = 0

    def observe(self, x: float) -> None:
        self.value = x if self.samples == 0 else (1 - self.weight) * self.value + self.weight * x
        self.samples += 1


class AdmissionController:
    def __init__(self, policy: AdmissionPolicy) -> None:
        if policy.max_committed_jobs < 1:
            raise ValueError("max_committed_jobs must be >= 1")
        if policy.assumed_tokens_per_s <= 0 or policy.safety_factor < 1:
            raise ValueError("assumed_tokens_per_s must be > 0 and safety_factor >= 1")
        self.policy = policy
        self.cold_start = _Ewma(policy.cold_start_s)
        self.chain_round_trip = _Ewma(policy.chain_round_trip_s)
        self.refused: dict[str, int] = {}

    def observe_cold_start(self, seconds: float) -> None:
        self.cold_start.observe(seconds)

    def observe_chain_round_trip(self, seconds: float) -> None:
        self.chain_round_trip.observe(seconds)

    def at_capacity(self, committed_jobs: int) -> bool:
        return committed_jobs >= self.policy.max_committed_jobs

    def decide(
        self,
        *,
        now: float,
        deadline: float,
        price: int,
        max_tokens: int,
        warm: bool,
        committed_jobs: int,
        committed_tokens: int,
        tokens_per_s: float,
    ) -> Decision:
        """`committed_*` count the jobs this node already holds (not this one); `tokens_per_s` is the
        engine's measured aggregate decode rate, 0 when nothing has been measured yet."""
        p = self.policy
        speed = tokens_per_s if tokens_per_s > 0 else p.assumed_tokens_per_s
        work = (committed_tokens + max_tokens) / speed
        cold = 0.0 if warm else self.cold_start.value
        estimate = p.safety_factor * (work + cold + self.chain_round_trip.value)
        if price < p.min_price_wei:
            return self._refuse(
                f"price {price} wei is below [policy].min_price_wei {p.min_price_wei}", "price", estimate
            )
        if self.at_capacity(committed_jobs):
            return self._refuse(
                f"node holds {committed_jobs} job(s), [admission].max_committed_jobs is "
                f"{p.max_committed_jobs}",
                "capacity",
                estimate,
            )
        left = deadline - now
        if estimate > left:
            return self._refuse(
                f"cannot finish in time: estimated {estimate:.1f}s "
                f"({committed_tokens + max_tokens} tokens at "
                f"{speed:.1f} tok/s, cold start {cold:.1f}s, chain {self.chain_round_trip.value:.1f}s, x"
                f"{p.safety_factor}) but the deadline is in {left:.1f}s",
                "deadline",
                estimate,
            )
        return Decision(True, f"estimated {estimate:.1f}s of {left:.1f}s", estimate, "")

    def _refuse(self, reason: str, kind: str, estimate: float) -> Decision:
        self.refused[kind] = self.refused.get(kind, 0) + 1
        return Decision(False, reason, estimate, kind)
