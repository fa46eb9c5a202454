"""Job economics: does this job pay the node more than it costs to serve?

The node is paid its *share* of the price, split exactly as the market splits it (price - the adapter
fee snapshotted into the job - the protocol fee). The cost of a job is what the node pays to serve it:

    gas  = claim gas + result gas(worst-case output bytes)          learnt from the node's own receipts
    cost = gas x the fee the node would pay now + compute price x (prompt + max tokens) / 1000
    admit when share >= cost x (1 + margin)   and   price >= [policy].min_price_wei

Gas figures start from the config and follow the node's receipts: the largest of the recent claims, and
for results the largest recent base once the per-byte part is taken out, so an estimate is an upper bound
of what the same job cost lately, never an average that half the jobs exceed."""

from __future__ import annotations

import collections
from dataclasses import dataclass

BPS = 10_000


def node_share(price: int, adapter_fee: int, protocol_fee_bps: int) -> int:
    """What the market credits the node for a result (JobMarket._settle)."""
    return price - adapter_fee - price * protocol_fee_bps // BPS


@dataclass(frozen=True)
class PricingPolicy:
    min_price_wei: int = 0
    compute_price_wei_per_1k_tokens: int = 10**12
    margin_percent: float = 20.0
    claim_gas: int = 60_000
    result_gas: int = 90_000
    result_gas_per_byte: int = 40


class GasModel:
    """Claim and result gas, from the config until the node has receipts of its own."""

    def __init__(self, policy: PricingPolicy, window: int = 32) -> None:
        self.policy = policy
        self._claims: collections.deque[int] = collections.deque(maxlen=window)
        self._result_bases: collections.deque[int] = collections.deque(maxlen=window)

    def observe_claim(self, gas_used: int) -> None:
        self._claims.append(gas_used)

    def observe_result(self, gas_used: int, output_bytes: int) -> None:
        self._result_bases.append(max(0, gas_used - self.policy.result_gas_per_byte * output_bytes))

    @property
    def claim_gas(self) -> int:
        return max(self._claims) if self._claims else self.policy.claim_gas

    def result_gas(self, output_bytes: int) -> int:
        base = max(self._result_bases) if self._result_bases else self.policy.result_gas
        return base + self.policy.result_gas_per_byte * output_bytes

    def job_gas(self, output_bytes: int) -> int:
        return self.claim_gas + self.result_gas(output_bytes)


@dataclass(frozen=True)
class Quote:
    share: int  # wei the node would be credited
    gas: int
    gas_price: int  # wei per gas the node would pay now
    compute: int  # wei
    margin_percent: float

    @property
    def cost(self) -> int:
        return self.gas * self.gas_price + self.compute

    @property
    def required(self) -> int:
        return self.cost + int(self.cost * self.margin_percent / 100)

    @property
    def profitable(self) -> bool:
        return self.share >= self.required

    def explain(self) -> str:
        return (
            f"node share {self.share} wei < cost {self.cost} wei (gas {self.gas} x {self.gas_price} wei + "
            f"compute {self.compute} wei) + {self.margin_percent:g}% margin = {self.required} wei"
        )


def effective_gas_price(base_fee: int, tip: int, cap: int) -> int:
    """What a tx sent now pays per gas under EIP-1559: base fee + tip, never above the node's cap."""
    return min(base_fee + tip, cap)


def quote(
    policy: PricingPolicy,
    gas: GasModel,
    *,
    price: int,
    adapter_fee: int,
    protocol_fee_bps: int,
    prompt_tokens: int,
    max_tokens: int,
    worst_output_bytes: int,
    gas_price: int,
) -> Quote:
    compute = policy.compute_price_wei_per_1k_tokens * (prompt_tokens + max_tokens) // 1000
    return Quote(
        share=node_share(price, adapter_fee, protocol_fee_bps),
        gas=gas.job_gas(worst_output_bytes),
        gas_price=gas_price,
        compute=compute,
        margin_percent=policy.margin_percent,
    )
