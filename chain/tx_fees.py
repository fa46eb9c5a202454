"""Fee arithmetic of the transaction manager (EIP-1559): what to offer, how to bump, how to replace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chain.tx_store import TxRecord


@dataclass(frozen=True)
class FeePolicy:
    max_fee_gwei: float = 200.0  # hard cap on maxFeePerGas
    max_priority_fee_gwei: float = 5.0
    bump_after_s: float = 30.0  # no receipt after this long: replace with higher fees, same nonce
    bump_percent: int = 15  # geth needs at least +10% on both fee fields
    max_bumps: int = 8
    gas_multiplier: float = 1.25
    retry_s: float = 3.0  # a refused broadcast (transport, pool full, below base fee) is retried this often
    stuck_after_s: float = 120.0  # pending this long (or unable to reach the chain at all): "stuck"

    @property
    def cap_wei(self) -> int:
        return gwei(self.max_fee_gwei)


def gwei(x: float) -> int:
    return int(x * 10**9)


def market_fees(base_fee: int, suggested_tip: int, policy: FeePolicy) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas): 2 x base fee + tip covers several full blocks of base-fee
    rises; both capped by the policy."""
    priority = min(suggested_tip, gwei(policy.max_priority_fee_gwei))
    max_fee = min(2 * base_fee + priority, policy.cap_wei)
    return max(max_fee, priority), priority


def bumped_fees(record: TxRecord, market: tuple[int, int], policy: FeePolicy) -> tuple[int, int]:
    """At least +bump_percent on both fields (the replacement rule) and at least what the market asks now,
    never above the cap (a self-transfer replacement may sit just above it, see `replacement_fees`)."""
    factor = 100 + policy.bump_percent
    cap = policy.cap_wei
    if record.cancel_from is not None:
        cap = max(cap, record.max_fee * factor // 100 + 1)
    current_max, current_priority = market
    new_priority = max(record.priority_fee * factor // 100 + 1, current_priority)
    new_max = min(max(record.max_fee * factor // 100 + 1, current_max, new_priority), cap)
    return new_max, min(new_priority, new_max)


def replacement_fees(record: TxRecord, market: tuple[int, int], policy: FeePolicy) -> tuple[int, int]:
    """Fees for a zero-value self-transfer replacing `record` at its nonce. It must beat the pending tx by
    the bump percent on both fields even at the fee cap: 21,000 gas just above the cap once is cheaper than
    the tx it replaces (a claim that would revert, or a nonce held forever)."""
    factor = 100 + policy.bump_percent
    market_max, market_priority = market
    priority = max(record.priority_fee * factor // 100 + 1, market_priority)
    return max(record.max_fee * factor // 100 + 1, market_max, priority), priority
