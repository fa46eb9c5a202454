"""Everything the node checks before it stakes a claim, from what it can know (never from guesses).

A claim locks stake that a missed deadline forfeits, so the node only claims a job that it can serve
(registry, policy, the input exactly as the engine will tokenize it, an output that fits on chain), that
pays (its own share of the price against gas at today's fee and compute, node/pricing.py), that the
chain will let it finish (no fee spike above the cap, no stuck transaction, gas money) and that fits
before the deadline on the chain's clock (node/admission.py).

Refusals carry a `kind` (a metric label, and the operator's guide in docs/operators.md) and whether they
are transient: a job refused for a passing condition (fees, a stuck tx, funds) is decided again once the
condition clears."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.prompt import PromptRejected
from node.jobs import JobState
from node.pricing import GasModel, PricingPolicy, Quote, effective_gas_price, quote

if TYPE_CHECKING:
    from node.daemon import NodeDaemon
    from node.jobs import Job

TRANSIENT_KINDS = frozenset({"fees", "tx-stuck", "funds", "stake"})


class AdmissionRefused(Exception):
    """The node leaves this job to others; the message says why."""

    def __init__(self, reason: str, kind: str = "policy") -> None:
        super().__init__(reason)
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT_KINDS

    @property
    def note(self) -> str:
        """What the job book records: `kind: reason` (the backlog finds transient ones by kind)."""
        return f"{self.kind}: {self}"


@dataclass(frozen=True)
class Admitted:
    prompt_tokens: int
    quote: Quote


class Gatekeeper:
    def __init__(self, daemon: NodeDaemon, inline_limit: int) -> None:
        self.d = daemon
        p = daemon.config.policy
        self.pricing = PricingPolicy(
            min_price_wei=p.min_price_wei,
            compute_price_wei_per_1k_tokens=p.compute_price_wei_per_1k_tokens,
            margin_percent=p.margin_percent,
            claim_gas=p.claim_gas,
            result_gas=p.result_gas,
            result_gas_per_byte=p.result_gas_per_byte,
        )
        self.gas = GasModel(self.pricing)
        self.inline_limit = inline_limit
        self.tip_wei = int(daemon.config.chain.max_priority_fee_gwei * 10**9)  # until the RPC suggests one
        self.refused: dict[str, int] = {}

    @property
    def cap_wei(self) -> int:
        return self.d.tx.fees.cap_wei

    def gas_price_now(self) -> int:
        head = self.d.watcher.latest
        return effective_gas_price(head.base_fee if head else 0, self.tip_wei, self.cap_wei)

    def chain_blocked(self) -> AdmissionRefused | None:
        """A condition of the chain or of our own transactions under which no new claim is made."""
        head = self.d.watcher.latest
        if head is not None and head.base_fee > self.cap_wei:
            return AdmissionRefused(
                f"base fee {head.base_fee / 1e9:.2f} gwei is above the fee cap [chain].max_fee_gwei "
                f"({self.cap_wei / 1e9:g} gwei): a claim now could not be answered in time",
                "fees",
            )
        health = self.d.tx.health()
        if health.funds_low:
            return AdmissionRefused(health.funds_low, "funds")
        if health.stuck:
            return AdmissionRefused(
                f"transaction(s) {', '.join(health.stuck)} stuck: no new claims until they mine", "tx-stuck"
            )
        return None

    async def check(self, job: Job, committed: list[Job]) -> Admitted:
        """Raises AdmissionRefused, else says what the job will cost and pay."""
        try:
            return await self._check(job, committed)
        except AdmissionRefused as e:
            self.refused[e.kind] = self.refused.get(e.kind, 0) + 1
            raise

    async def _check(self, job: Job, committed: list[Job]) -> Admitted:
        d = self.d
        adapter = self._check_registry(job)
        if job.max_tokens > d.config.engine.max_tokens_cap:
            raise AdmissionRefused(f"max_tokens {job.max_tokens} exceeds [engine].max_tokens_cap", "input")
        if not job.input and job.input_cid:
            raise AdmissionRefused("inputs by CID are not fetched by this node version", "input")
        worst_bytes = job.max_tokens * d.service.max_output_bytes_per_token
        if worst_bytes > self.inline_limit:
            raise AdmissionRefused(
                f"worst-case output of {job.max_tokens} tokens is {worst_bytes} bytes, over the market's "
                f"inline limit of {self.inline_limit} bytes",
                "output",
            )
        try:
            prompt_tokens = d.service.check_input(job.input, job.max_tokens)
        except PromptRejected as e:
            raise AdmissionRefused(f"input refused ({e.reason}): {e}", "input") from None
        if job.price < self.pricing.min_price_wei:
            raise AdmissionRefused(
                f"price {job.price} wei is below [policy].min_price_wei {self.pricing.min_price_wei}", "price"
            )
        blocked = self.chain_blocked()
        if blocked is not None:
            raise blocked
        await self._check_stake(job)
        terms = d.terms_of(job)  # the terms the claim will name (hash-bound on chain: no read needed)
        q = quote(
            self.pricing,
            self.gas,
            price=terms.price,
            adapter_fee=terms.adapter_fees,
            protocol_fee_bps=terms.protocol_fee_bps,
            prompt_tokens=prompt_tokens,
            max_tokens=job.max_tokens,
            worst_output_bytes=worst_bytes,
            gas_price=self.gas_price_now(),
        )
        if not q.profitable:
            raise AdmissionRefused(f"unprofitable: {q.explain()}", "unprofitable")
        others = [j for j in committed if j.job_id != job.job_id and j.state.value != "seen"]
        decision = d.admission.decide(
            now=d.chain_time(),
            deadline=job.deadline,
            price=job.price,
            max_tokens=job.max_tokens,
            warm=d.service.is_warm(adapter.cid),
            committed_jobs=len(others),
            committed_tokens=sum(j.max_tokens for j in others if j.state.value != "posting"),
            tokens_per_s=d.service.engine.stats().tokens_per_s,
        )
        if not decision.admit:
            raise AdmissionRefused(decision.reason, decision.kind)
        return Admitted(prompt_tokens, q)

    async def claim_stake(self, price: int = 0) -> int:
        """What a claim on a job of this price locks (the market's minimum for price 0)."""
        return await self.d.protocol.claim_stake_for(price)

    async def _check_stake(self, job: Job) -> None:
        """A claim locks claimStakeFor(price): with our claims in flight, is there enough free stake?"""
        d = self.d
        need = await self.claim_stake(job.price)
        free = await d.protocol.nodes.functions.freeStake(d.operator.address).call()
        # every job between admission and a mined claim will lock stake: reserve it now
        unmined = [
            j for j in d.jobs.in_states((JobState.FETCHING, JobState.CLAIMING)) if j.job_id != job.job_id
        ]
        reserved = 0
        for other in unmined:
            reserved += await self.claim_stake(other.price)
        if free - reserved < need:
            raise AdmissionRefused(
                f"free stake {free} wei (less {reserved} wei for {len(unmined)} claim(s) on the way) does "
                f"not cover this job's claim stake of {need} wei: waiting for claimed jobs to settle, or "
                "add stake",
                "stake",
            )

    def _check_registry(self, job: Job):
        d = self.d
        adapter = d.registry.adapter(job.adapter_id)
        policy = d.config.policy
        if adapter is None:
            raise AdmissionRefused(f"adapter {job.adapter_id} is not in the registry", "registry")
        if adapter.base_model != d.base_model_id:
            raise AdmissionRefused(f"adapter {job.adapter_id} is for another base model", "registry")
        if adapter.content_hash != job.adapter_hash:
            raise AdmissionRefused("job's adapter hash differs from the registry's", "registry")
        if adapter.retired:
            raise AdmissionRefused(f"adapter {job.adapter_id} is retired", "registry")
        if adapter.cid in policy.denied_cids:
            raise AdmissionRefused(f"adapter CID {adapter.cid} is on the deny list", "policy")
        allowed = {p.lower() for p in policy.allowed_publishers}
        if allowed and adapter.publisher.lower() not in allowed:
            raise AdmissionRefused(
                f"publisher {adapter.publisher} is not in [policy].allowed_publishers", "policy"
            )
        if adapter.attestations < policy.min_attestations:
            raise AdmissionRefused(
                f"adapter {job.adapter_id} has {adapter.attestations} attestation(s), policy needs "
                f"{policy.min_attestations}",
                "policy",
            )
        return adapter
