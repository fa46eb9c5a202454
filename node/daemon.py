"""The node daemon: watch the market, drive each job through its state machine, keep the chain honest.

One asyncio loop. The watcher feeds events in; a driver task per active job moves it forward one
persisted state at a time; the transaction manager's poll loop tracks receipts and bumps fees."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import AsyncWeb3

from chain.protocol import JobStatus, Protocol
from chain.signing import ResultClaim
from chain.tx import SimulationError, TxFailedError, TxManager
from chain.tx_store import TxState
from chain.watcher import Batch, ChainEvent, EventWatcher
from inference.prompt import PromptRejected
from inference.service import InferenceService
from inference.validate import AdapterRejected
from node.admission import AdmissionController, AdmissionPolicy
from node.config import NodeConfig
from node.gatekeeper import TRANSIENT_KINDS, AdmissionRefused, Gatekeeper
from node.jobs import Job, JobBook, JobState
from node.readiness import Readiness
from node.registry_view import RegistryView
from node.sd_notify import SystemdNotifier

if TYPE_CHECKING:
    from node.p2p import P2PNode

log = logging.getLogger("openlora.node")
CAPACITY_NOTE = "node at capacity"


NEVER_MINED = (TxState.FAILED, TxState.CANCELLED)  # the tx's nonce went to something else: send again


def _is_rpc_error(e: BaseException) -> bool:
    """Errors of the chain's RPC (transport or a JSON-RPC answer), as opposed to the node's own bugs."""
    from aiohttp import ClientError
    from web3.exceptions import Web3Exception

    return isinstance(e, ConnectionError | TimeoutError | ClientError | Web3Exception | OSError)


@dataclass
class NodeMetrics:
    started_at: float = field(default_factory=time.time)
    jobs_paid: int = 0
    earned_wei: int = 0
    tokens_generated: int = 0
    claim_latency_s: list[float] = field(default_factory=list)
    adapter_rejections: int = 0
    rpc_errors: int = 0
    reorgs: int = 0  # chain reorganisations the watcher detected and the node reconciled
    txs_resent_after_reorg: int = 0
    jobs_resumed: int = 0  # jobs picked up again from their persisted state after a restart
    jobs_skipped_capacity: int = 0  # left unclaimed because the node already held max_committed_jobs
    driver_errors: int = 0  # unexpected errors while driving a job (not RPC): each is logged
    slashes: int = 0  # claims of ours that expired unanswered
    slashed_wei: int = 0
    jobs_failed: dict[str, int] = field(default_factory=dict)  # by reason
    jobs_expired: int = 0  # jobs we held that expired
    txs_cancelled: int = 0

    def observe_claim_latency(self, seconds: float, keep: int = 1024) -> None:
        self.claim_latency_s.append(seconds)
        del self.claim_latency_s[:-keep]  # bounded: a long-running node keeps the recent window


class NodeDaemon:
    def __init__(
        self,
        config: NodeConfig,
        w3: AsyncWeb3,
        protocol: Protocol,
        operator: LocalAccount,
        signer: LocalAccount,
        jobs: JobBook,
        registry: RegistryView,
        watcher: EventWatcher,
        tx: TxManager,
        service: InferenceService,
        p2p: P2PNode | None = None,
        warm_backoff_s: float = 3.0,
    ) -> None:
        self.config = config
        self.w3 = w3
        self.protocol = protocol
        self.operator = operator
        self.signer = signer
        self.jobs = jobs
        self.registry = registry
        self.watcher = watcher
        self.tx = tx
        self.service = service
        self.p2p = p2p
        self.warm_backoff_s = warm_backoff_s
        self.metrics = NodeMetrics()
        self.base_model_id = keccak(text=config.node.base_model)
        self._drivers: dict[int, asyncio.Task] = {}
        self._inflight = asyncio.Semaphore(config.node.max_inflight_jobs)  # steps of claimed work at once
        # pre-claim fetches have their own limit: a slow or hostile source never holds back running jobs
        self._fetch_slots = asyncio.Semaphore(config.ipfs.max_concurrent_fetches)
        self.admission = AdmissionController(
            AdmissionPolicy(
                min_price_wei=config.policy.min_price_wei,
                max_committed_jobs=config.admission.max_committed_jobs,
                assumed_tokens_per_s=config.admission.assumed_tokens_per_s,
                cold_start_s=config.admission.cold_start_s,
                chain_round_trip_s=config.admission.chain_round_trip_s,
                safety_factor=config.admission.safety_factor,
            )
        )
        self.gatekeeper = Gatekeeper(self, inline_limit=16 * 1024)
        self.readiness = Readiness(self)
        self.notifier = SystemdNotifier()
        self.progress: dict[str, float] = {}  # daemon loop -> time.monotonic() of its last iteration
        self.watcher_failures = 0
        self._side_tasks: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._reorg_lock = asyncio.Lock()  # the watcher and the tx audit may both report one reorg
        self.ready = False

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def chain_time(self) -> float:
        """Now on the chain's clock (the head block's timestamp, extrapolated): deadlines are decided by
        block timestamps, so the host's wall clock, which may be off by minutes, never decides them."""
        head = self.watcher.latest
        return head.chain_time() if head is not None else time.time()

    # ---- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.service.start()
        if self.p2p is not None:
            await self.p2p.start()
            log.info("p2p: peer %s listening on %s", self.p2p.peer_id, ", ".join(self.p2p.listen_addrs))
        await self.tx.recover()
        await self.watcher.refresh_head()
        self.gatekeeper.inline_limit = await self.protocol.market.functions.MAX_INLINE_BYTES().call()
        for job in self.jobs.active():
            log.info("recovery: resuming job %d from state %s", job.job_id, job.state.value)
            self.metrics.jobs_resumed += 1
            self._spawn(job.job_id)
        loops = [
            asyncio.create_task(self._watch_loop(), name="watch"),
            asyncio.create_task(self._tx_loop(), name="tx"),
        ]
        if self.p2p is not None:
            loops.append(asyncio.create_task(self._announce_loop(), name="announce"))
        await self.readiness.refresh()
        loops.append(asyncio.create_task(self._health_loop(), name="health"))
        for t in loops:
            t.add_done_callback(self._loop_ended)
        self.ready = True
        self.notifier.ready(f"serving {self.config.node.base_model}")
        log.info(
            "node %s serving %s (signer %s)",
            self.operator.address,
            self.config.node.base_model,
            self.signer.address,
        )
        await stop.wait()
        self.notifier.stopping()
        await self.drain()
        for t in loops:
            t.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self.p2p is not None:
            await self.p2p.stop()
        await self.service.stop()

    async def drain(self, timeout: float = 60.0) -> None:
        """Stop taking new jobs; let in-flight ones reach a resting state."""
        self._stopping.set()
        self.ready = False
        pending = [t for t in self._drivers.values() if not t.done()]
        if pending:
            log.info("draining %d in-flight job(s)", len(pending))
            _, still = await asyncio.wait(pending, timeout=timeout)
            for t in still:
                t.cancel()
            await asyncio.gather(*still, return_exceptions=True)

    # ---- chain events ----------------------------------------------------------------------------
    async def _watch_loop(self) -> None:
        while True:
            self.progress["watch"] = time.monotonic()
            try:
                batch = await self.watcher.next_batch()
                if self.watcher_failures:
                    log.info("watcher: recovered after %d failure(s)", self.watcher_failures)
                    self.watcher_failures = 0
                if batch is None:
                    await asyncio.sleep(self.config.chain.poll_interval_s)
                    continue
                await self._handle_batch(batch)
                self.watcher.commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # an error, never a reorg: the cursor stays, the same range is retried
                self.watcher_failures += 1
                failures = self.watcher_failures
                self._count_error(e)
                if failures == 1 or failures % 20 == 0:  # an outage is one line, not one per poll
                    log.warning("watcher: %s; retrying (%d failure(s) in a row)", e, failures)
                await asyncio.sleep(min(10.0, self.config.chain.poll_interval_s * 2 ** min(failures, 6)))

    def _loop_ended(self, task: asyncio.Task) -> None:
        """A daemon loop must never end before shutdown: if one does, say so (the watchdog stops, too)."""
        if not task.cancelled() and task.exception() is not None:
            log.critical(
                "daemon loop %s died: %r", task.get_name(), task.exception(), exc_info=task.exception()
            )

    def _count_error(self, e: BaseException) -> None:
        if _is_rpc_error(e):
            self.metrics.rpc_errors += 1
        else:
            self.metrics.driver_errors += 1

    async def _health_loop(self) -> None:
        """Readiness, the systemd watchdog (fed only while the daemon's loops make progress), and jobs left
        for a passing reason (fees, a stuck tx, funds) decided again once it clears."""
        h = self.config.health
        period = h.check_interval_s
        if self.notifier.watchdog_s:
            period = min(period, self.notifier.watchdog_s / 2)
        while True:
            self.progress["health"] = time.monotonic()
            try:
                report = await self.readiness.refresh()
                self.notifier.status("ready" if report.ready else "not ready: " + ", ".join(report.reasons))
                if self.gatekeeper.chain_blocked() is None and not self._stopping.is_set():
                    self._readmit_transient()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("health check failed: %s", e)
            now = time.monotonic()
            loops = ("watch", "tx")
            if all(now - self.progress.get(name, now) < h.stalled_after_s for name in loops):
                self.notifier.watchdog()
            await asyncio.sleep(period)

    def _readmit_transient(self) -> None:
        live = sum(1 for t in self._drivers.values() if not t.done())
        for kind in TRANSIENT_KINDS:
            if self.admission.at_capacity(live):
                return
            if kind == "stake" and "stake" in self.readiness.report.reasons:
                continue
            for job in self.jobs.skipped_with_note_prefix(f"{kind}: ", after=self.chain_time() + 5, limit=8):
                self.jobs.transition(
                    job.job_id, JobState.SEEN, f"{kind} cleared: admission decided again", error=None
                )
                self._spawn(job.job_id)
                live += 1

    async def _handle_batch(self, batch: Batch) -> None:
        if batch.reorg_from is not None:
            await self._reconcile_after_reorg(batch.reorg_from)
        for i, event in enumerate(batch.events):
            if self.registry.apply(event):
                continue
            self._apply_market_event(event)
            if i % 32 == 31:
                await asyncio.sleep(0)  # a burst of events must not starve /healthz or the drivers

    def committed(self) -> list[Job]:
        """Jobs this node holds a driver for (seen and being worked on, or claimed)."""
        jobs = [self.jobs.get(i) for i, t in self._drivers.items() if not t.done()]
        return [j for j in jobs if j is not None and not j.terminal]

    def _apply_market_event(self, e: ChainEvent) -> None:
        a = e.args
        job_id = a.get("jobId")
        if e.name == "JobSubmitted":
            adapter = self.registry.adapter(a["adapterId"])
            job = Job(
                job_id=job_id,
                state=JobState.SEEN,
                submitter=a["submitter"],
                adapter_id=a["adapterId"],
                adapter_hash=bytes(a["adapterHash"]),
                input=bytes(a["input"]),
                input_cid=a["inputCid"],
                input_hash=bytes(a["inputHash"]),
                max_tokens=a["maxTokens"],
                deadline=a["deadline"],
                price=a["price"],
                seen_block=e.block_number,
                adapter_cid=adapter.cid if adapter else "",
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
            if self.tx.store.get(f"claim:{job_id}") is not None:  # ours is pending: it can only revert now
                task = asyncio.create_task(
                    self._cancel_tx(f"claim:{job_id}", f"job {job_id} was claimed by {a['node']}")
                )
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
        elif e.name == "JobCancelled" and self.jobs.can(job_id, JobState.CANCELLED):
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.CANCELLED, "cancelled by submitter")

    async def _cancel_tx(self, key: str, reason: str) -> None:
        try:
            record = await self.tx.cancel(key, reason)
            if record is not None and record.cancel_from is not None:
                self.metrics.txs_cancelled += 1
        except Exception as e:
            log.warning("could not replace %s: %s (it may revert and cost gas)", key, e)

    def _end(self, job_id: int, state: JobState, note: str, reason: str = "error") -> None:
        """Every expiry and failure of a job we worked on: a WARNING/ERROR line with its id, and a metric."""
        self.jobs.transition(job_id, state, note, error=note)
        if state == JobState.EXPIRED:
            self.metrics.jobs_expired += 1
            log.warning("job %d expired: %s", job_id, note)
        elif state == JobState.FAILED:
            self.metrics.jobs_failed[reason] = self.metrics.jobs_failed.get(reason, 0) + 1
            log.error("job %d FAILED (%s): %s", job_id, reason, note)

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
        resent_ids = {int(r.key.split(":")[1]) for r in resent if r.key.startswith(("claim:", "result:"))}
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

    # ---- transactions ----------------------------------------------------------------------------
    async def _tx_loop(self) -> None:
        failures = 0
        passes = 0
        while True:
            self.progress["tx"] = time.monotonic()
            try:
                for record in await self.tx.poll():
                    log.info("tx %s %s (nonce %d)", record.key, record.state.value, record.nonce)
                passes += 1
                if passes % self.config.chain.reorg_audit_every == 0:
                    await self._audit_settled_txs()
                if failures:
                    log.info("tx monitor: recovered after %d failure(s)", failures)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                self._count_error(e)
                if failures == 1 or failures % 20 == 0:
                    log.warning("tx monitor: %s; retrying (%d failure(s) in a row)", e, failures)
            await asyncio.sleep(min(10.0, self.config.chain.poll_interval_s * 2 ** min(failures, 6)))

    async def _audit_settled_txs(self) -> None:
        """A reorg deeper than `[chain].confirmations` can drop a tx we already settled, in blocks the
        watcher never processed (it was behind): the tx manager re-checks settled txs until they are
        `[chain].finality_blocks` deep, and a drop is repaired exactly like a reorg the watcher saw."""
        dropped_from = await self.tx.find_dropped(self.config.chain.finality_blocks)
        if dropped_from is None:
            return
        log.warning(
            "recovery: a settled transaction of ours in block %d is no longer on the chain (a reorg deeper"
            " than [chain].confirmations = %d): repairing",
            dropped_from,
            self.config.chain.confirmations,
        )
        await self._reconcile_after_reorg(dropped_from)

    # ---- peer network ----------------------------------------------------------------------------
    async def _announce_loop(self) -> None:
        from node.p2p import Capacity

        while True:
            try:
                stats = self.service.engine.stats()
                device, host = self.service.warm_adapters()
                free = sum(1 for s in stats.slots if s.pinned == 0)
                capacity = Capacity(
                    free_slots=free,
                    queue_depth=stats.queue_depth + stats.running,
                    tokens_per_s=stats.tokens_per_s,
                )
                await self.p2p.announce(capacity, device, host)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("p2p announce failed: %s", e)
            await asyncio.sleep(self.p2p.config.announce_interval_s)

    def _claim_delay(self, cid: str) -> float:
        """Warm-aware claiming: give a registered peer that holds this adapter warm a bounded head start."""
        if self.p2p is None:
            return 0.0
        from node.p2p import claim_delay

        return claim_delay(
            cid,
            self.service.is_warm(cid),
            self.p2p.announcements(),
            time.time(),
            backoff_s=self.warm_backoff_s,
            self_address=self.signer.address,
        )

    def _fetch_sources(self, cid: str) -> list | None:
        """Warm peers first (bitswap), then the configured sources; None = the store's defaults."""
        if self.p2p is None:
            return None
        from node.p2p import BitswapSource

        peers = BitswapSource.for_adapter(self.p2p, cid)
        return [peers, *self.service.store.sources] if peers.peer_ids else None

    # ---- job drivers -----------------------------------------------------------------------------
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
        for job in self.jobs.skipped_for_capacity(CAPACITY_NOTE, after=self.chain_time() + 5, limit=1):
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
