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
from chain.watcher import Batch, ChainEvent, EventWatcher
from inference.service import InferenceService
from node.config import NodeConfig
from node.jobs import Job, JobBook, JobState
from node.registry_view import RegistryView

if TYPE_CHECKING:
    from node.p2p import P2PNode

log = logging.getLogger("openlora.node")


class AdmissionRefused(Exception):  # noqa: N818 - a decision, not a fault
    """The node leaves this job to others; the message says why."""


@dataclass
class NodeMetrics:
    started_at: float = field(default_factory=time.time)
    jobs_paid: int = 0
    earned_wei: int = 0
    tokens_generated: int = 0
    claim_latency_s: list[float] = field(default_factory=list)
    adapter_rejections: int = 0
    rpc_errors: int = 0


class NodeDaemon:
    def __init__(
        self, config: NodeConfig, w3: AsyncWeb3, protocol: Protocol, operator: LocalAccount, signer: LocalAccount,
        jobs: JobBook, registry: RegistryView, watcher: EventWatcher, tx: TxManager, service: InferenceService,
        p2p: P2PNode | None = None, warm_backoff_s: float = 3.0,
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
        self._inflight = asyncio.Semaphore(config.node.max_inflight_jobs)
        self._stopping = asyncio.Event()
        self.ready = False

    # ---- lifecycle -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self.service.start()
        if self.p2p is not None:
            await self.p2p.start()
            log.info("p2p: peer %s listening on %s", self.p2p.peer_id, ", ".join(self.p2p.listen_addrs))
        await self.tx.recover()
        for job in self.jobs.active():
            log.info("resuming job %d from state %s", job.job_id, job.state.value)
            self._spawn(job.job_id)
        loops = [asyncio.create_task(self._watch_loop(), name="watch"),
                 asyncio.create_task(self._tx_loop(), name="tx")]
        if self.p2p is not None:
            loops.append(asyncio.create_task(self._announce_loop(), name="announce"))
        self.ready = True
        log.info("node %s serving %s (signer %s)", self.operator.address, self.config.node.base_model,
                 self.signer.address)
        await stop.wait()
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
            try:
                batch = await self.watcher.next_batch()
                if batch is None:
                    await asyncio.sleep(self.config.chain.poll_interval_s)
                    continue
                await self._handle_batch(batch)
                self.watcher.commit(batch)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.rpc_errors += 1
                log.warning("watcher: %s; retrying", e)
                await asyncio.sleep(min(5.0, self.config.chain.poll_interval_s * 2))

    async def _handle_batch(self, batch: Batch) -> None:
        if batch.reorg_from is not None:
            await self._reconcile_after_reorg(batch.reorg_from)
        for event in batch.events:
            if self.registry.apply(event):
                continue
            self._apply_market_event(event)

    def _apply_market_event(self, e: ChainEvent) -> None:
        a = e.args
        job_id = a.get("jobId")
        if e.name == "JobSubmitted":
            adapter = self.registry.adapter(a["adapterId"])
            job = Job(
                job_id=job_id, state=JobState.SEEN, submitter=a["submitter"], adapter_id=a["adapterId"],
                adapter_hash=bytes(a["adapterHash"]), input=bytes(a["input"]), input_cid=a["inputCid"],
                input_hash=bytes(a["inputHash"]), max_tokens=a["maxTokens"], deadline=a["deadline"],
                price=a["price"], seen_block=e.block_number, adapter_cid=adapter.cid if adapter else "",
            )
            if self.jobs.add(job) and not self._stopping.is_set():
                self._spawn(job_id)
            return
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is None:
            return
        mine = a.get("node") == self.operator.address
        if e.name == "JobClaimed" and not mine and not job.terminal:
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.LOST, f"claimed by {a['node']}")
        elif e.name == "ResultSubmitted" and mine:
            self._mark_paid(job_id, a, e.tx_hash)
        elif e.name == "JobExpired" and self.jobs.can(job_id, JobState.EXPIRED):
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.EXPIRED, f"expired on chain, slashed {a['slashed']}")
        elif e.name == "JobCancelled" and self.jobs.can(job_id, JobState.CANCELLED):
            self._cancel_driver(job_id)
            self.jobs.transition(job_id, JobState.CANCELLED, "cancelled by submitter")

    async def _reconcile_after_reorg(self, from_block: int) -> None:
        """Blocks >= from_block were replaced: ask the chain where each affected job really stands."""
        for job in self.jobs.seen_since(0):
            if job.state in (JobState.EXPIRED, JobState.CANCELLED):
                continue
            status = await self.protocol.job_status(job.job_id)
            node = await self.protocol.job_node(job.job_id)
            if status == JobStatus.NONE:
                # the submission itself was dropped; it may come back in the new chain
                continue
            if status == JobStatus.OPEN and job.state in (JobState.LOST, JobState.SKIPPED):
                if job.state == JobState.LOST:
                    self.jobs.transition(job.job_id, JobState.SEEN, f"reorg from block {from_block} undid a claim")
                    self._spawn(job.job_id)
            elif status == JobStatus.OPEN and job.state in (JobState.CLAIMED, JobState.RUNNING, JobState.POSTING):
                self.jobs.transition(job.job_id, JobState.CLAIMING, f"reorg from block {from_block} undid our claim")
                self._spawn(job.job_id)
            elif status == JobStatus.CLAIMED and node == self.operator.address and job.state == JobState.PAID:
                self.jobs.transition(job.job_id, JobState.POSTING, f"reorg from block {from_block} undid our result")
                self._spawn(job.job_id)

    # ---- transactions ----------------------------------------------------------------------------
    async def _tx_loop(self) -> None:
        while True:
            try:
                for record in await self.tx.poll():
                    log.info("tx %s %s (nonce %d)", record.key, record.state.value, record.nonce)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.metrics.rpc_errors += 1
                log.warning("tx monitor: %s; retrying", e)
            await asyncio.sleep(self.config.chain.poll_interval_s)

    # ---- peer network ----------------------------------------------------------------------------
    async def _announce_loop(self) -> None:
        from node.p2p import Capacity

        while True:
            try:
                stats = self.service.engine.stats()
                device, host = self.service.warm_adapters()
                free = sum(1 for s in stats.slots if s.pinned == 0)
                capacity = Capacity(free_slots=free, queue_depth=stats.queue_depth + stats.running,
                                    tokens_per_s=stats.tokens_per_s)
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

        return claim_delay(cid, self.service.is_warm(cid), self.p2p.announcements(), time.time(),
                           backoff_s=self.warm_backoff_s, self_address=self.signer.address)

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
            return
        self._drivers[job_id] = asyncio.create_task(self._drive(job_id), name=f"job-{job_id}")

    def _cancel_driver(self, job_id: int) -> None:
        task = self._drivers.get(job_id)
        if task and not task.done() and task is not asyncio.current_task():
            task.cancel()

    async def _drive(self, job_id: int) -> None:
        async with self._inflight:
            while True:
                job = self.jobs.get(job_id)
                if job is None or job.terminal:
                    return
                if time.time() >= job.deadline and job.state != JobState.POSTING:
                    self.jobs.transition(job_id, JobState.EXPIRED, "deadline passed before we could finish")
                    return
                try:
                    await self._step(job)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # a bug or an RPC outage: keep the state, try again later
                    self.metrics.rpc_errors += 1
                    log.warning("job %d: %s in state %s; will retry", job_id, e, job.state.value)
                    await asyncio.sleep(2.0)

    async def _step(self, job: Job) -> None:
        match job.state:
            case JobState.SEEN:
                try:
                    self._admit(job)
                except AdmissionRefused as e:
                    log.info("job %d skipped: %s", job.job_id, e)
                    self.jobs.transition(job.job_id, JobState.SKIPPED, str(e))
                    return
                adapter = self.registry.adapter(job.adapter_id)
                delay = self._claim_delay(adapter.cid)
                note = f"a warm peer gets {delay:.1f}s head start" if delay else ""
                self.jobs.transition(job.job_id, JobState.FETCHING, note, adapter_cid=adapter.cid,
                                     claim_after=time.time() + delay)
            case JobState.FETCHING:
                await self._fetch(job)
            case JobState.CLAIMING:
                wait = job.claim_after - time.time()
                if wait > 0:  # the watcher marks the job LOST if the warm peer claims it meanwhile
                    await asyncio.sleep(min(wait, 0.25))
                    return
                await self._claim(job)
            case JobState.CLAIMED:
                self.jobs.transition(job.job_id, JobState.RUNNING)
            case JobState.RUNNING:
                await self._run(job)
            case JobState.POSTING:
                await self._post(job)

    def _admit(self, job: Job) -> None:
        adapter = self.registry.adapter(job.adapter_id)
        policy = self.config.policy
        if adapter is None:
            raise AdmissionRefused(f"adapter {job.adapter_id} is not in the registry")
        if adapter.base_model != self.base_model_id:
            raise AdmissionRefused(f"adapter {job.adapter_id} is for another base model")
        if adapter.content_hash != job.adapter_hash:
            raise AdmissionRefused("job's adapter hash differs from the registry's")
        if adapter.retired:
            raise AdmissionRefused(f"adapter {job.adapter_id} is retired")
        if adapter.cid in policy.denied_cids:
            raise AdmissionRefused(f"adapter CID {adapter.cid} is on the deny list")
        allowed = {p.lower() for p in policy.allowed_publishers}
        if allowed and adapter.publisher.lower() not in allowed:
            raise AdmissionRefused(f"publisher {adapter.publisher} is not in [policy].allowed_publishers")
        if adapter.attestations < policy.min_attestations:
            raise AdmissionRefused(
                f"adapter {job.adapter_id} has {adapter.attestations} attestation(s), policy needs "
                f"{policy.min_attestations}")
        if job.price < policy.min_price_wei:
            raise AdmissionRefused(f"price {job.price} wei is below [policy].min_price_wei")
        if job.max_tokens > self.config.engine.max_tokens_cap:
            raise AdmissionRefused(f"max_tokens {job.max_tokens} exceeds [engine].max_tokens_cap")
        if not job.input and job.input_cid:
            raise AdmissionRefused("inputs by CID are not fetched by this node version")
        if job.deadline - time.time() < 5:
            raise AdmissionRefused("too close to its deadline to finish")

    async def _fetch(self, job: Job) -> None:
        from inference.ipfs.fetcher import FetchError
        from inference.validate import AdapterRejected

        try:
            prepared = await self.service.prepare(job.adapter_cid, job.adapter_hash,
                                                  self._fetch_sources(job.adapter_cid))
        except (FetchError, AdapterRejected) as e:
            self.metrics.adapter_rejections += 1
            log.error("job %d: adapter %s (id %d) refused: %s — job left for other nodes", job.job_id,
                      job.adapter_cid, job.adapter_id, e)
            self.jobs.transition(job.job_id, JobState.SKIPPED, f"adapter refused: {e}")
            return
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
            to = {JobStatus.EXPIRED: JobState.EXPIRED, JobStatus.CANCELLED: JobState.CANCELLED}.get(
                status, JobState.LOST)
            self.jobs.transition(job.job_id, to, f"claim not sent: {e.reason}")
            return
        except TxFailedError as e:
            self.jobs.transition(job.job_id, JobState.LOST, f"claim failed on chain: {e}")
            return
        self.metrics.claim_latency_s.append(time.monotonic() - started)
        self.jobs.transition(job.job_id, JobState.CLAIMED, f"claimed in tx {record.mined_hash}",
                             claim_tx=record.mined_hash)

    async def _run(self, job: Job) -> None:
        prompt = job.input.decode("utf-8", errors="replace")
        result = await self.service.generate(job.adapter_cid, job.adapter_hash, prompt, job.max_tokens)
        self.metrics.tokens_generated += len(result.token_ids)
        output = result.text.encode("utf-8")
        claim = ResultClaim.for_output(await self.tx.chain_id(), self.protocol.market.address, job.job_id,
                                       job.input_hash, job.adapter_hash, output)
        signature = claim.sign(self.signer.key)
        self.jobs.transition(job.job_id, JobState.POSTING, f"{len(result.token_ids)} tokens in {result.total_s:.2f}s",
                             output=output, signature=signature)

    async def _post(self, job: Job) -> None:
        key = f"result:{job.job_id}"
        data = self.protocol.calldata(self.protocol.market, "submitResult", job.job_id, job.output, job.signature)
        try:
            await self.tx.send(key, self.protocol.market.address, data)
            record = await self.tx.wait(key, timeout=max(10.0, job.deadline - time.time() + 30))
        except SimulationError as e:
            status = await self.protocol.job_status(job.job_id)
            if status == JobStatus.COMPLETED:
                return  # already paid: the watcher will record it
            to = JobState.EXPIRED if status == JobStatus.EXPIRED else JobState.FAILED
            self.jobs.transition(job.job_id, to, f"result not sent: {e.reason}")
            return
        except TxFailedError as e:
            self.jobs.transition(job.job_id, JobState.FAILED, f"result tx failed: {e}")
            return
        receipt = await self.w3.eth.get_transaction_receipt(record.mined_hash)
        for event in self.protocol.market.events.ResultSubmitted().process_receipt(receipt):
            self._mark_paid(job.job_id, event["args"], record.mined_hash)

    def _mark_paid(self, job_id: int, args: dict, tx_hash: str) -> None:
        """Both the result receipt and the watcher's event land here; the first one records the payment."""
        job = self.jobs.get(job_id)
        if job is None or job.state == JobState.PAID or not self.jobs.can(job_id, JobState.PAID):
            return
        self.jobs.transition(job_id, JobState.PAID, f"paid {args['nodeAmount']} wei in tx {tx_hash}",
                             node_amount=args["nodeAmount"], adapter_amount=args["adapterAmount"],
                             protocol_amount=args["protocolAmount"], result_tx=tx_hash)
        self.metrics.jobs_paid += 1
        self.metrics.earned_wei += args["nodeAmount"]
