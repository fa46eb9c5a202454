"""The on-chain steps of a job (protocol v2): claim and post, batched across jobs that are ready together.

Mixed into NodeDaemon. A claim names the job's exact terms (from its JobSubmitted event), so claim bytes
re-broadcast after a reorg can never claim another job. Jobs ready within `[chain].batch_window_s` share
one claimJobs / submitResults transaction (one ECDSA signature over the batch's results); each job then reads
its own outcome from the receipt. The tx key names every job of the batch (`claims:3,4,9`), and each job
records its key, so a restart waits for the batch already sent instead of sending a second one."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from web3.logs import DISCARD

from chain.protocol import PAID_STATUSES, JobStatus
from chain.signing import ZERO32, ResultBatch, SignedResult
from chain.terms import Terms
from chain.tx import SimulationError, TxFailedError
from chain.tx_store import TxRecord, TxState
from node.jobs import Job, JobState

log = logging.getLogger("openlora.node")
NEVER_MINED = (TxState.FAILED, TxState.CANCELLED)  # the tx's nonce went to something else: send again
SENT_AGAIN = (TxState.FAILED, TxState.CANCELLED, TxState.REVERTED)


def job_ids_of_key(key: str) -> list[int]:
    """Job ids a claim/result tx key covers ("claims:3,4,9" / "results:7")."""
    kind, _, ids = key.partition(":")
    if kind not in ("claims", "results") or not ids:
        return []
    return [int(i) for i in ids.split(",")]


def _unclaimed_end(status: JobStatus) -> JobState:
    """Where a job we could not claim ends, by its on-chain status."""
    return {JobStatus.EXPIRED: JobState.EXPIRED, JobStatus.CANCELLED: JobState.CANCELLED}.get(
        status, JobState.LOST
    )


@dataclass(frozen=True)
class BatchOutcome:
    record: TxRecord
    done: frozenset[int]  # jobs of the batch the receipt shows as claimed (or answered) by us
    size: int


class ChainSteps:
    """Mixed into NodeDaemon (node/daemon.py): every method runs on the daemon's own state."""

    def terms_of(self, job: Job) -> Terms:
        if not job.terms:
            raise RuntimeError(f"job {job.job_id} has no terms recorded (seen before protocol v2?)")
        return Terms.from_json(job.terms)

    # ---- claims -----------------------------------------------------------------------------------
    async def _claim(self, job: Job) -> None:
        started = time.monotonic()
        try:
            outcome = await self._claim_outcome(job)
        except SimulationError as e:
            await self._claim_not_sent(job, e.reason)
            return
        except TxFailedError as e:
            status = await self.protocol.job_status(job.job_id)
            if e.record.state in NEVER_MINED and status == JobStatus.OPEN:
                log.warning("job %d: claim tx never mined (%s): claiming again", job.job_id, e)
                return  # still CLAIMING: the next step sends a new claim with a fresh nonce
            if status == JobStatus.OPEN:
                note = f"stake: claim reverted with the job still open ({e}): decided again when stake frees"
                log.warning("job %d: %s", job.job_id, note)
                self.jobs.transition(job.job_id, JobState.SKIPPED, note, error=note)
                return
            if not (
                status == JobStatus.CLAIMED
                and await self.protocol.job_node(job.job_id) == self.operator.address
            ):
                self.jobs.transition(job.job_id, JobState.LOST, f"claim failed on chain: {e}")
                return
            log.warning("job %d: claim tx reported %s but the chain says we hold the job", job.job_id, e)
            outcome = BatchOutcome(e.record, frozenset({job.job_id}), 1)
        if job.job_id not in outcome.done:
            state = await self.protocol.job_state(job.job_id)
            to = _unclaimed_end(state.status)
            if state.status == JobStatus.CLAIMED and state.node == self.operator.address:
                to = JobState.CLAIMED
            elif state.status == JobStatus.OPEN:
                # not claimed in that batch, still open (e.g. reopened meanwhile): forget that batch so the
                # next step claims again instead of re-reading the same receipt
                self.jobs.transition(
                    job.job_id, JobState.CLAIMING, "not claimed in its batch: claiming again", claim_key=None
                )
                return
            if to != JobState.CLAIMED:
                self.jobs.transition(
                    job.job_id,
                    to,
                    f"not claimed in batch {outcome.record.mined_hash}: job is {state.status.name}",
                )
                return
        latency = time.monotonic() - started
        if outcome.record.gas_used:
            self.gatekeeper.gas.observe_claim(outcome.record.gas_used // max(1, len(outcome.done)))
        self.metrics.observe_claim_latency(latency)
        self.admission.observe_chain_round_trip(2 * latency)  # a result is one more mined tx, like the claim
        self.jobs.transition(
            job.job_id,
            JobState.CLAIMED,
            f"claimed in tx {outcome.record.mined_hash} ({outcome.size} job(s) in the batch)",
            claim_tx=outcome.record.mined_hash,
        )

    async def _claim_outcome(self, job: Job) -> BatchOutcome:
        existing = self.tx.store.get(job.claim_key) if job.claim_key else None
        if existing is not None and existing.state not in SENT_AGAIN:
            # sent before a restart (or by an earlier step): wait for it, never send a second claim
            record = await self.tx.wait(existing.key, timeout=max(10.0, job.deadline - time.time()))
            return await self._outcome(record, "JobClaimed")
        return await self.claim_batcher.submit(job.job_id)

    async def _send_claims(self, job_ids: list[int]) -> BatchOutcome:
        jobs = sorted(
            (j for j in (self.jobs.get(i) for i in job_ids) if j is not None), key=lambda j: j.job_id
        )
        key = "claims:" + ",".join(str(j.job_id) for j in jobs)
        data = self.protocol.calldata(
            self.protocol.market, "claimJobs", [self.terms_of(j).claim_key() for j in jobs]
        )
        for j in jobs:  # persisted before the send: a restart finds the batch by its key
            self.jobs.transition(j.job_id, JobState.CLAIMING, claim_key=key)
        record = await self.tx.send(key, self.protocol.market.address, data)
        for j in jobs:
            self.jobs.transition(j.job_id, JobState.CLAIMING, claim_tx=record.hashes[-1])
        record = await self.tx.wait(key, timeout=max(10.0, min(j.deadline for j in jobs) - time.time()))
        return await self._outcome(record, "JobClaimed")

    async def _outcome(self, record: TxRecord, event: str) -> BatchOutcome:
        receipt = await self.w3.eth.get_transaction_receipt(record.mined_hash)
        events = getattr(self.protocol.market.events, event)().process_receipt(receipt, errors=DISCARD)
        ours = frozenset(e["args"]["jobId"] for e in events if e["args"]["node"] == self.operator.address)
        return BatchOutcome(record, ours, len(job_ids_of_key(record.key)) or 1)

    async def _claim_not_sent(self, job: Job, reason: str) -> None:
        status = await self.protocol.job_status(job.job_id)
        if status == JobStatus.OPEN and any(
            k in reason for k in ("NodeNotEligible", "InsufficientFreeStake", "NothingClaimed")
        ):
            if "NothingClaimed" in reason and self.chain_time() >= job.deadline:
                self._end(job.job_id, JobState.EXPIRED, f"claim not sent: {reason}")
                return
            # our free stake is locked in other claims right now: left for later, not lost
            note = f"stake: claim not sent ({reason}): free stake is locked in other claims"
            self.jobs.transition(job.job_id, JobState.SKIPPED, note, error=note)
            return
        to = _unclaimed_end(status)
        self.jobs.transition(job.job_id, to, f"claim not sent: {reason}")

    # ---- results ----------------------------------------------------------------------------------
    async def _post(self, job: Job) -> None:
        try:
            existing = self.tx.store.get(job.result_key) if job.result_key else None
            if existing is not None and existing.state not in SENT_AGAIN:
                record = await self.tx.wait(
                    existing.key, timeout=max(10.0, job.deadline - self.chain_time() + 30)
                )
                outcome = await self._outcome(record, "ResultSubmitted")
            else:
                outcome = await self.result_batcher.submit(job.job_id)
        except SimulationError as e:
            status = await self.protocol.job_status(job.job_id)
            if status in PAID_STATUSES:
                await asyncio.sleep(0.5)
                return  # already answered: the watcher will record it
            if status == JobStatus.EXPIRED:
                self._end(job.job_id, JobState.EXPIRED, f"result not sent: {e.reason}")
            elif status == JobStatus.CLAIMED and self.chain_time() < job.deadline:
                raise  # e.g. a node on a lagging view: the market still takes the result, retry
            else:
                self._end(
                    job.job_id, JobState.FAILED, f"result not sent: {e.reason}", reason="result-refused"
                )
            return
        except TxFailedError as e:
            status = await self.protocol.job_status(job.job_id)
            if status in PAID_STATUSES:
                await asyncio.sleep(0.5)
                return  # answered after all (the watcher records it)
            if e.record.state in NEVER_MINED and status == JobStatus.CLAIMED:
                log.warning("job %d: result tx never mined (%s): posting again", job.job_id, e)
                return  # still POSTING: the next step sends it again with a fresh nonce
            self._end(job.job_id, JobState.FAILED, f"result tx failed: {e}", reason="result-reverted")
            return
        if outcome.record.gas_used and outcome.done:
            self.gatekeeper.gas.observe_result(
                outcome.record.gas_used // len(outcome.done), len(job.output or b"")
            )
        if job.job_id not in outcome.done:
            # the batch mined without this job's result (the market skipped it): ask where the job stands
            status = await self.protocol.job_status(job.job_id)
            if status in PAID_STATUSES:  # answered by another of our txs (a re-send): the watcher records it
                await asyncio.sleep(0.5)
                return
            if status == JobStatus.CLAIMED and self.chain_time() < job.deadline:
                note = f"result skipped in {outcome.record.mined_hash}: posting again"
                self.jobs.transition(job.job_id, JobState.POSTING, note, result_key=None)
                return
            self._end(
                job.job_id,
                JobState.FAILED,
                f"result not accepted (job is {status.name})",
                reason="result-refused",
            )
            return
        receipt = await self.w3.eth.get_transaction_receipt(outcome.record.mined_hash)
        for event in self.protocol.market.events.ResultSubmitted().process_receipt(receipt, errors=DISCARD):
            if event["args"]["jobId"] == job.job_id:
                self._mark_paid(job.job_id, event["args"], outcome.record.mined_hash)

    async def _send_results(self, job_ids: list[int]) -> BatchOutcome:
        jobs = sorted(
            (j for j in (self.jobs.get(i) for i in job_ids) if j is not None and j.output is not None),
            key=lambda j: j.job_id,
        )
        terms = [self.terms_of(j) for j in jobs]
        proofs = [j.proof_hash or ZERO32 for j in jobs]
        batch = ResultBatch(
            await self.tx.chain_id(),
            self.protocol.market.address,
            tuple(
                SignedResult.for_output(t.job_id, t.hash(), j.output, p)
                for t, j, p in zip(terms, jobs, proofs, strict=True)
            ),
        )
        signature = batch.sign(self.signer.key)
        items = [t.result_entry(j.output, p) for t, j, p in zip(terms, jobs, proofs, strict=True)]
        key = "results:" + ",".join(str(j.job_id) for j in jobs)
        data = self.protocol.calldata(self.protocol.market, "submitResults", items, signature)
        for j in jobs:
            self.jobs.transition(j.job_id, JobState.POSTING, result_key=key)
        await self.tx.send(key, self.protocol.market.address, data)
        record = await self.tx.wait(
            key, timeout=max(10.0, min(j.deadline for j in jobs) - self.chain_time() + 30)
        )
        return await self._outcome(record, "ResultSubmitted")

    def _mark_paid(self, job_id: int, args: dict, tx_hash: str) -> None:
        """Both the result receipt and the watcher's event land here; the first one records the payment
        (held by the market for the challenge window, then withdrawable)."""
        job = self.jobs.get(job_id)
        if job is None or job.state == JobState.PAID or not self.jobs.can(job_id, JobState.PAID):
            return
        first_time = job.node_amount is None  # a result re-posted after a reorg is not new earnings
        terms = self.terms_of(job)
        self.jobs.transition(
            job_id,
            JobState.PAID,
            f"paid {args['nodeAmount']} wei in tx {tx_hash} (held for the challenge window)",
            node_amount=args["nodeAmount"],
            adapter_amount=terms.adapter_fees,
            protocol_amount=terms.protocol_amount,
            result_tx=tx_hash,
        )
        if first_time:
            self.metrics.jobs_paid += 1
            self.metrics.earned_wei += args["nodeAmount"]
