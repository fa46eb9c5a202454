"""Driving one job through its state machine: admission, fetch, claim, run, post, paid.

The steps of `NodeDaemon` (node/daemon.py) that move a job forward one persisted state at a time; the
state machine itself is node/jobs.py, admission node/gatekeeper.py, the on-chain steps (batched claims and
results) node/chain_steps.py, transactions chain/tx.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from inference.prompt import PromptRejected
from inference.validate import AdapterRejected
from node.errors import is_rpc_error
from node.gatekeeper import AdmissionRefused
from node.jobs import Job, JobState

if TYPE_CHECKING:
    pass

log = logging.getLogger("openlora.node")
CAPACITY_NOTE = "node at capacity"


class JobDriver:
    """Mixed into NodeDaemon: every method here runs on the daemon's own state."""

    def _spawn(self, job_id: int) -> None:
        running = self._drivers.get(job_id)
        if running and not running.done():
            if running.cancelling():  # being replaced (reorg): start the new driver once the old one ends
                running.add_done_callback(lambda _: None if self._stopping.is_set() else self._spawn(job_id))
            return
        self._drivers[job_id] = asyncio.create_task(self._drive(job_id), name=f"job-{job_id}")

    def _cancel_driver(self, job_id: int) -> None:
        task = self._drivers.get(job_id)
        if task and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _drive(self, job_id: int) -> None:
        try:
            await self._drive_steps(job_id)
        finally:
            if self._drivers.get(job_id) is asyncio.current_task() and not self._stopping.is_set():
                del self._drivers[job_id]  # bounded: only live drivers are kept
            if not self._stopping.is_set():
                self._admit_from_backlog()

    async def _drive_steps(self, job_id: int) -> None:
        failures = 0
        while True:
            job = self.jobs.get(job_id)
            if job is None or job.terminal:
                return
            if self._stopping.is_set() and not self._committed_on_chain(job):
                log.info(
                    "job %d left in state %s while draining (resumes on the next start)",
                    job_id,
                    job.state.value,
                )
                return
            if self.chain_time() >= job.deadline and job.state != JobState.POSTING:
                # on the chain's clock: the market refuses results from the first block at the deadline
                self._end(job_id, JobState.EXPIRED, "deadline passed (chain time) before we could finish")
                return
            try:
                async with self._fetch_slots if job.state == JobState.FETCHING else self._inflight:
                    await self._step(job)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or an RPC outage: keep the state, try again with backoff
                self._count_error(e)
                failures += 1
                # a flaky RPC answer is retried soon (the RPC layer already failed over); a bug backs off
                cap = 5.0 if is_rpc_error(e) else 30.0
                delay = min(cap, 1.0 * 2 ** min(failures - 1, 5))
                log.warning("job %d: %s in state %s; retrying in %.0fs", job_id, e, job.state.value, delay)
                await asyncio.sleep(delay)

    def _committed_on_chain(self, job: Job) -> bool:
        """True once a claim for this job was signed: from then on draining finishes the job."""
        return job.state not in (JobState.SEEN, JobState.FETCHING, JobState.CLAIMING) or (
            bool(job.claim_key) and self.tx.store.get(job.claim_key) is not None
        )

    def _admit_from_backlog(self) -> None:
        """A driver finished: give its place to the oldest job skipped for capacity that is still worth trying
        (admission is decided again, on-chain races by the claim's simulation)."""
        live = sum(1 for t in self._drivers.values() if not t.done() and t is not asyncio.current_task())
        if self.admission.at_capacity(live):
            return
        after = self.chain_time() + 5
        waiting = self.jobs.skipped_for_capacity(CAPACITY_NOTE, after=after, limit=1)
        # a finished job also released its claim stake: the oldest job left for lack of stake gets it
        waiting = waiting or self.jobs.skipped_with_note_prefix("stake: ", after=after, limit=1)
        for job in waiting:
            self.jobs.transition(
                job.job_id, JobState.SEEN, "capacity freed: admission decided again", error=None
            )
            self._spawn(job.job_id)

    async def _step(self, job: Job) -> None:
        match job.state:
            case JobState.SEEN:
                try:
                    await self.gatekeeper.check(job, self.committed())
                except AdmissionRefused as e:
                    log.info("job %d not claimed (%s): %s", job.job_id, e.kind, e)
                    self.jobs.transition(job.job_id, JobState.SKIPPED, e.note, error=e.note)
                    return
                adapter = self.registry.adapter(job.adapter_id)
                delay = self._claim_delay(adapter.cid)
                note = f"a warm peer gets {delay:.1f}s head start" if delay else ""
                self.jobs.transition(
                    job.job_id,
                    JobState.FETCHING,
                    note,
                    adapter_cid=adapter.cid,
                    claim_after=time.time() + delay,
                )
            case JobState.FETCHING:
                await self._fetch(job)
            case JobState.CLAIMING:
                wait = job.claim_after - time.time()
                if wait > 0:  # the watcher marks the job LOST if the warm peer claims it meanwhile
                    await asyncio.sleep(min(wait, 0.25))
                    return
                await self._claim(job)
            case JobState.CLAIMED:
                self.service.prefetch(job.adapter_cid, job.adapter_hash)  # a queued job's adapter, ahead
                self.jobs.transition(job.job_id, JobState.RUNNING)
            case JobState.RUNNING:
                await self._run(job)
            case JobState.POSTING:
                await self._post(job)

    async def _fetch(self, job: Job) -> None:
        from inference.ipfs.fetcher import FetchError
        from inference.validate import AdapterRejected

        cold = not self.service.is_warm(job.adapter_cid)
        started = time.monotonic()
        try:
            prepared = await self.service.prepare(
                job.adapter_cid, job.adapter_hash, self._fetch_sources(job.adapter_cid)
            )
        except (FetchError, AdapterRejected) as e:
            self.metrics.adapter_rejections += 1
            log.error(
                "job %d: adapter %s (id %d) refused: %s — job left for other nodes",
                job.job_id,
                job.adapter_cid,
                job.adapter_id,
                e,
            )
            self.jobs.transition(job.job_id, JobState.SKIPPED, f"adapter refused: {e}")
            return
        if cold:
            self.admission.observe_cold_start(time.monotonic() - started)
        self.jobs.transition(job.job_id, JobState.CLAIMING, f"adapter ready (rank {prepared.rank})")

    async def _run(self, job: Job) -> None:
        prompt = job.input.decode("utf-8", errors="replace")  # admission refused non-UTF-8 input
        try:
            result = await self.service.generate(
                job.adapter_cid, job.adapter_hash, prompt, job.max_tokens, record_hidden=self.evidence.enabled
            )
        except (PromptRejected, AdapterRejected) as e:
            # deterministic: the same input and adapter are refused every time, so retrying only waits for
            # the slash. Admission makes this unreachable; it is terminal at once if it happens anyway.
            reason = "input-rejected" if isinstance(e, PromptRejected) else "adapter-rejected"
            self._end(
                job.job_id, JobState.FAILED, f"engine refused the job after our claim: {e}", reason=reason
            )
            return
        self.metrics.tokens_generated += len(result.token_ids)
        proof_hash = await asyncio.to_thread(self.evidence.publish, result)
        output = result.text.encode("utf-8")
        if self.config.verify.test_cheat == "edit-output":  # TEST HOOK: a dishonest node, for dispute tests
            output = output[::-1] or b"?"
        self.jobs.transition(
            job.job_id,
            JobState.POSTING,
            f"{len(result.token_ids)} tokens in {result.total_s:.2f}s"
            + (", proof published" if proof_hash else ""),
            output=output,
            proof_hash=proof_hash,
        )
