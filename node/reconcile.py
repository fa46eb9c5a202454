"""After a reorg: our transactions mined in the dropped blocks are re-sent, and each job whose on-chain
standing may have changed is moved back to the step that redoes what the reorg undid."""

from __future__ import annotations

import logging

from chain.protocol import JobStatus
from node.chain_steps import job_ids_of_key
from node.jobs import JobState

log = logging.getLogger("openlora.node")


class ReorgReconciler:
    """Mixed into NodeDaemon (node/daemon.py)."""

    async def _reconcile_after_reorg(self, from_block: int) -> None:
        """Blocks >= from_block were replaced. First our own transactions mined there are re-sent (same
        signed bytes, nonce order), then each job whose on-chain standing may have changed is asked
        where it really stands and moved back to the step that redoes what the reorg undid."""
        async with self._reorg_lock:
            await self._reconcile_after_reorg_locked(from_block)

    async def _reconcile_after_reorg_locked(self, from_block: int) -> None:
        self.metrics.reorgs += 1
        resent = await self.tx.reconcile_reorg(from_block)
        self.metrics.txs_resent_after_reorg += len(resent)
        if resent:
            log.warning(
                "recovery: reorg from block %d dropped %d of our transaction(s): re-sent %s",
                from_block,
                len(resent),
                ", ".join(r.key for r in resent),
            )
        # Only jobs the dropped blocks can have touched: those in flight, those whose claim or result we
        # had mined there, and lost ones recent enough for the rival's claim to have been in them.
        resent_ids = {i for r in resent for i in job_ids_of_key(r.key)}
        in_flight = (JobState.CLAIMING, JobState.CLAIMED, JobState.RUNNING, JobState.POSTING)
        candidates = {j.job_id: j for j in self.jobs.in_states(in_flight)}
        for job in self.jobs.in_states((JobState.LOST, JobState.PAID)):
            if job.job_id in resent_ids or (
                job.state == JobState.LOST and job.seen_block >= from_block - 7200
            ):
                candidates[job.job_id] = job
        for job in candidates.values():
            status = await self.protocol.job_status(job.job_id)
            node = await self.protocol.job_node(job.job_id)
            ours = node == self.operator.address
            note = f"recovery: reorg from block {from_block}"
            if status == JobStatus.NONE:
                continue  # the submission itself was dropped; it may come back in the new chain
            if job.state == JobState.LOST and status == JobStatus.OPEN:
                self.jobs.transition(job.job_id, JobState.SEEN, f"{note} undid a rival's claim")
                log.warning("%s undid a rival's claim on job %d: competing again", note, job.job_id)
                self._spawn(job.job_id)
            elif (
                job.state in (JobState.CLAIMED, JobState.RUNNING, JobState.POSTING)
                and status == JobStatus.OPEN
            ):
                self._cancel_driver(job.job_id)
                self.jobs.transition(job.job_id, JobState.CLAIMING, f"{note} undid our claim: re-claiming")
                log.warning("%s undid our claim on job %d: claim re-sent", note, job.job_id)
                self._spawn(job.job_id)
            elif (
                job.state in (JobState.CLAIMED, JobState.RUNNING, JobState.POSTING)
                and not ours
                and status == JobStatus.CLAIMED
            ):
                self._cancel_driver(job.job_id)
                self.jobs.transition(job.job_id, JobState.LOST, f"{note}: the job is now claimed by {node}")
            elif job.state == JobState.PAID and status in (JobStatus.OPEN, JobStatus.CLAIMED):
                self.jobs.transition(job.job_id, JobState.POSTING, f"{note} undid our result: re-posting")
                log.warning("%s undid the result of job %d: result re-sent", note, job.job_id)
                self._spawn(job.job_id)
