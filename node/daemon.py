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

from chain.protocol import Protocol
from chain.tx import TxManager
from chain.watcher import Batch, EventWatcher
from inference.ipfs.blockstore import BlockStore
from inference.service import InferenceService
from node.admission import AdmissionController, AdmissionPolicy
from node.batcher import Batcher
from node.chain_steps import ChainSteps
from node.config import NodeConfig
from node.driver import JobDriver
from node.errors import is_rpc_error
from node.evidence import EvidenceKeeper
from node.gatekeeper import TRANSIENT_KINDS, Gatekeeper
from node.jobs import Job, JobBook, JobState
from node.market_events import MarketEvents
from node.readiness import Readiness
from node.reconcile import ReorgReconciler
from node.registry_view import RegistryView
from node.sd_notify import SystemdNotifier

if TYPE_CHECKING:
    from node.p2p import P2PNode

log = logging.getLogger("openlora.node")


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


class NodeDaemon(JobDriver, ChainSteps, MarketEvents, ReorgReconciler):
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
        self.evidence = EvidenceKeeper(BlockStore(config.evidence_dir), config.verify.prove)
        c = config.chain
        self.claim_batcher = Batcher(self._send_claims, window_s=c.batch_window_s, max_items=c.max_batch)
        self.result_batcher = Batcher(self._send_results, window_s=c.batch_window_s, max_items=c.max_batch)
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
        if is_rpc_error(e):
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
            # stake frees one claim at a time (finished drivers hand it on, driver.py): one a tick here
            room = 1 if kind == "stake" else self.config.admission.max_committed_jobs - live
            for job in self.jobs.skipped_with_note_prefix(
                f"{kind}: ", after=self.chain_time() + 5, limit=room
            ):
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

    def _end(self, job_id: int, state: JobState, note: str, reason: str = "error") -> None:
        """Every expiry and failure of a job we worked on: a WARNING/ERROR line with its id, and a metric."""
        self.jobs.transition(job_id, state, note, error=note)
        if state == JobState.EXPIRED:
            self.metrics.jobs_expired += 1
            log.warning("job %d expired: %s", job_id, note)
        elif state == JobState.FAILED:
            self.metrics.jobs_failed[reason] = self.metrics.jobs_failed.get(reason, 0) + 1
            log.error("job %d FAILED (%s): %s", job_id, reason, note)

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
