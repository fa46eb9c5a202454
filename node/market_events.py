"""What the node does with each market event the watcher delivers: a new job gets a driver (or is left for
others at capacity), a rival's claim makes ours pointless, a result pays us, an expiry, reclaim, release or
cancellation ends or reopens a job. Mixed into NodeDaemon (node/daemon.py); the job state machine is
node/jobs.py."""

from __future__ import annotations

import asyncio
import logging

from chain.terms import Terms
from chain.watcher import ChainEvent
from node.chain_steps import job_ids_of_key
from node.driver import CAPACITY_NOTE
from node.jobs import Job, JobState

log = logging.getLogger("openlora.node")


class MarketEvents:
    """Mixed into NodeDaemon: every method here runs on the daemon's own state."""

    def _apply_market_event(self, e: ChainEvent) -> None:
        a = e.args
        job_id = a.get("jobId")
        if e.name == "JobSubmitted":
            terms = Terms.from_abi(a["terms"])
            adapter = self.registry.adapter(terms.adapter_id)
            job = Job(
                job_id=job_id,
                state=JobState.SEEN,
                submitter=terms.submitter,
                adapter_id=terms.adapter_id,
                adapter_hash=terms.adapter_hash,
                input=bytes(a["input"]),
                input_cid=a["inputCid"],
                input_hash=terms.input_hash,
                max_tokens=terms.max_tokens,
                deadline=terms.deadline,
                price=terms.price,
                seen_block=e.block_number,
                adapter_cid=adapter.cid if adapter else "",
                terms=terms.to_json(),
            )
            if not self.jobs.add(job) or self._stopping.is_set():
                return
            live = sum(1 for t in self._drivers.values() if not t.done())
            if self.admission.at_capacity(live):
                # bounded work: no driver, no queue entry; the job stays open for other nodes
                self.metrics.jobs_skipped_capacity += 1
                self.jobs.transition(
                    job_id,
                    JobState.SKIPPED,
                    f"{CAPACITY_NOTE} ({live} jobs held, "
                    f"[admission].max_committed_jobs = {self.config.admission.max_committed_jobs})",
                    error=CAPACITY_NOTE,
                )
                return
            self._spawn(job_id)
            return
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is None:
            return
        mine = a.get("node") == self.operator.address
        if e.name == "JobClaimed" and not mine and (not job.terminal or job.state == JobState.SKIPPED):
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.LOST, f"claimed by {a['node']}")
            key = job.claim_key
            if (
                key
                and self.tx.store.get(key) is not None
                and all(
                    (other := self.jobs.get(i)) is not None and other.state == JobState.LOST
                    for i in job_ids_of_key(key)
                )
            ):  # ours is pending and every job it names is lost: it can only revert now
                task = asyncio.create_task(self._cancel_tx(key, f"jobs of {key} were claimed by others"))
                self._side_tasks.add(task)
                task.add_done_callback(self._side_tasks.discard)
        elif e.name == "ResultSubmitted" and mine:
            self._mark_paid(job_id, a, e.tx_hash)
        elif e.name == "JobExpired" and self.jobs.can(job_id, JobState.EXPIRED):
            self._cancel_driver(job_id)
            ours = job.state in (JobState.CLAIMED, JobState.RUNNING, JobState.POSTING, JobState.FAILED)
            if ours and a["slashed"]:
                self.metrics.slashes += 1
                self.metrics.slashed_wei += a["slashed"]
                log.error(
                    "job %d expired on chain with our claim: SLASHED %d wei (was %s: %s)",
                    job_id,
                    a["slashed"],
                    job.state.value,
                    job.error or "no error recorded",
                )
            self._end(job_id, JobState.EXPIRED, f"expired on chain, slashed {a['slashed']}")
        elif e.name in ("JobReclaimed", "JobReleased"):
            self._on_reopened(job, a, slashed=e.name == "JobReclaimed")
        elif e.name == "JobCancelled" and self.jobs.can(job_id, JobState.CANCELLED):
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.CANCELLED, "cancelled by submitter")

    def _on_reopened(self, job: Job, a: dict, *, slashed: bool) -> None:
        """A claim ended without a result: reclaimed after its service window (claimant slashed) or released
        by its claimant. Ours: counted and logged. The job reopens (if its deadline allows) for every node,
        this one included when the claim was a rival's."""
        ours = a["node"] == self.operator.address
        if ours and slashed:
            self.metrics.slashes += 1
            self.metrics.slashed_wei += a["slashed"]
            log.error(
                "job %d reclaimed after its service window: our claim SLASHED %d wei (was %s: %s)",
                job.job_id,
                a["slashed"],
                job.state.value,
                job.error or "no error recorded",
            )
        if not a["reopened"]:
            return  # refunded past the deadline: JobExpired follows in the same transaction
        if ours:
            self._cancel_driver(job.job_id)
            if self.jobs.can(job.job_id, JobState.LOST):
                self.jobs.transition(
                    job.job_id, JobState.LOST, "our claim ended without a result: job reopened"
                )
        elif job.state == JobState.LOST and not self._stopping.is_set():
            self.jobs.transition(
                job.job_id, JobState.SEEN, f"reopened: {a['node']}'s claim ended without a result"
            )
            self._spawn(job.job_id)

    async def _cancel_tx(self, key: str, reason: str) -> None:
        try:
            record = await self.tx.cancel(key, reason)
            if record is not None and record.cancel_from is not None:
                self.metrics.txs_cancelled += 1
        except Exception as e:
            log.warning("could not replace %s: %s (it may revert and cost gas)", key, e)
