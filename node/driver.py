"""Driving one job through its state machine: admission, fetch, claim, run, post, paid.

The steps of `NodeDaemon` (node/daemon.py) that move a job forward one persisted state at a time; the
state machine itself is node/jobs.py, admission node/gatekeeper.py, transactions chain/tx.py."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from chain.protocol import JobStatus
from chain.signing import ResultClaim
from chain.tx import SimulationError, TxFailedError
from chain.tx_store import TxState
from inference.prompt import PromptRejected
from inference.validate import AdapterRejected
from node.gatekeeper import AdmissionRefused
from node.jobs import Job, JobState

if TYPE_CHECKING:
    pass

log = logging.getLogger("openlora.node")
CAPACITY_NOTE = "node at capacity"
NEVER_MINED = (TxState.FAILED, TxState.CANCELLED)  # the tx's nonce went to something else: send again


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
                delay = min(30.0, 1.0 * 2 ** min(failures - 1, 5))
                log.warning("job %d: %s in state %s; retrying in %.0fs", job_id, e, job.state.value, delay)
                await asyncio.sleep(delay)

    def _committed_on_chain(self, job: Job) -> bool:
        """True once a claim for this job was signed: from then on draining finishes the job."""
        return (
            job.state not in (JobState.SEEN, JobState.FETCHING, JobState.CLAIMING)
            or self.tx.store.get(f"claim:{job.job_id}") is not None
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

    async def _claim(self, job: Job) -> None:
        started = time.monotonic()
        key = f"claim:{job.job_id}"
        data = self.protocol.calldata(self.protocol.market, "claimJob", job.job_id)
        try:
            record = await self.tx.send(key, self.protocol.market.address, data)
            self.jobs.transition(job.job_id, JobState.CLAIMING, claim_tx=record.hashes[-1])
            record = await self.tx.wait(key, timeout=max(10.0, job.deadline - time.time()))
        except SimulationError as e:
            status = await self.protocol.job_status(job.job_id)
            if status == JobStatus.OPEN and "NodeNotEligible" in e.reason:
                # our free stake is locked in other claims right now: left for later, not lost
                note = f"stake: claim not sent ({e.reason}): free stake is locked in other claims"
                self.jobs.transition(job.job_id, JobState.SKIPPED, note, error=note)
                return
            to = {JobStatus.EXPIRED: JobState.EXPIRED, JobStatus.CANCELLED: JobState.CANCELLED}.get(
                status, JobState.LOST
            )
            self.jobs.transition(job.job_id, to, f"claim not sent: {e.reason}")
            return
        except TxFailedError as e:
            status = await self.protocol.job_status(job.job_id)
            if e.record.state in NEVER_MINED and status == JobStatus.OPEN:
                log.warning("job %d: claim tx never mined (%s): claiming again", job.job_id, e)
                return  # still CLAIMING: the next step sends a new claim with a fresh nonce
            if status == JobStatus.OPEN:  # reverted, yet the job is open: our stake was locked meanwhile
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
            record = e.record
        latency = time.monotonic() - started
        if record.gas_used:
            self.gatekeeper.gas.observe_claim(record.gas_used)
        self.metrics.observe_claim_latency(latency)
        self.admission.observe_chain_round_trip(2 * latency)  # a result is one more mined tx, like the claim
        self.jobs.transition(
            job.job_id, JobState.CLAIMED, f"claimed in tx {record.mined_hash}", claim_tx=record.mined_hash
        )

    async def _run(self, job: Job) -> None:
        prompt = job.input.decode("utf-8", errors="replace")  # admission refused non-UTF-8 input
        try:
            result = await self.service.generate(job.adapter_cid, job.adapter_hash, prompt, job.max_tokens)
        except (PromptRejected, AdapterRejected) as e:
            # deterministic: the same input and adapter are refused every time, so retrying only waits for
            # the slash. Admission makes this unreachable; it is terminal at once if it happens anyway.
            reason = "input-rejected" if isinstance(e, PromptRejected) else "adapter-rejected"
            self._end(
                job.job_id, JobState.FAILED, f"engine refused the job after our claim: {e}", reason=reason
            )
            return
        self.metrics.tokens_generated += len(result.token_ids)
        output = result.text.encode("utf-8")
        claim = ResultClaim.for_output(
            await self.tx.chain_id(),
            self.protocol.market.address,
            job.job_id,
            job.input_hash,
            job.adapter_hash,
            output,
        )
        signature = claim.sign(self.signer.key)
        self.jobs.transition(
            job.job_id,
            JobState.POSTING,
            f"{len(result.token_ids)} tokens in {result.total_s:.2f}s",
            output=output,
            signature=signature,
        )

    async def _post(self, job: Job) -> None:
        key = f"result:{job.job_id}"
        data = self.protocol.calldata(
            self.protocol.market, "submitResult", job.job_id, job.output, job.signature
        )
        try:
            await self.tx.send(key, self.protocol.market.address, data)
            record = await self.tx.wait(key, timeout=max(10.0, job.deadline - self.chain_time() + 30))
        except SimulationError as e:
            status = await self.protocol.job_status(job.job_id)
            if status == JobStatus.COMPLETED:
                return  # already paid: the watcher will record it
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
            if status == JobStatus.COMPLETED:
                return  # paid after all (the watcher records it)
            if e.record.state in NEVER_MINED and status == JobStatus.CLAIMED:
                log.warning("job %d: result tx never mined (%s): posting again", job.job_id, e)
                return  # still POSTING: the next step sends it again with a fresh nonce
            self._end(job.job_id, JobState.FAILED, f"result tx failed: {e}", reason="result-reverted")
            return
        if record.gas_used:
            self.gatekeeper.gas.observe_result(record.gas_used, len(job.output or b""))
        receipt = await self.w3.eth.get_transaction_receipt(record.mined_hash)
        for event in self.protocol.market.events.ResultSubmitted().process_receipt(receipt):
            self._mark_paid(job.job_id, event["args"], record.mined_hash)

    def _mark_paid(self, job_id: int, args: dict, tx_hash: str) -> None:
        """Both the result receipt and the watcher's event land here; the first one records the payment."""
        job = self.jobs.get(job_id)
        if job is None or job.state == JobState.PAID or not self.jobs.can(job_id, JobState.PAID):
            return
        first_time = job.node_amount is None  # a result re-posted after a reorg is not new earnings
        self.jobs.transition(
            job_id,
            JobState.PAID,
            f"paid {args['nodeAmount']} wei in tx {tx_hash}",
            node_amount=args["nodeAmount"],
            adapter_amount=args["adapterAmount"],
            protocol_amount=args["protocolAmount"],
            result_tx=tx_hash,
        )
        if first_time:
            self.metrics.jobs_paid += 1
            self.metrics.earned_wei += args["nodeAmount"]
