"""The multi-LoRA engine: one shared base model, a rank-paged adapter pool on the device under one byte
budget, a host tier behind it, and a decode loop in a worker thread that batches rows of different
adapters. Swap-ins run outside the model lock (on a side CUDA stream on GPUs, `swap.py`)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable

import torch

from inference.adapter import AdapterWeights
from inference.engine.config import EngineConfig, enable_fast_matmul, resolve_dtype
from inference.engine.engine_admission import EngineAdmissionMixin
from inference.engine.engine_sync import EngineSyncMixin
from inference.engine.host_tier import HostTier
from inference.engine.lora_layer import LoraBatch, MultiLoraLinear, wrap_model
from inference.engine.lora_plan import rank_class
from inference.engine.messages import (
    EngineStats,
    GenerationRequest,
    GenerationResult,
    HiddenStates,
    StepRecord,
)
from inference.engine.model_runner import ModelRunner
from inference.engine.pages import PagePool
from inference.engine.prepared import PreparedAdapter
from inference.engine.sampling import SamplingRows, StopChecker, find_stop, next_token_tensor
from inference.engine.scheduler import Job, Outcome, Scheduler
from inference.engine.swap import Swapper
from inference.engine.transfers import Uploads
from inference.models import LoadedModel
from inference.prompt import decode_output

log = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[AdapterWeights]]


class Engine(EngineAdmissionMixin, EngineSyncMixin):
    """Takes ownership of `base.model`: its target linear layers are wrapped in place, once."""

    def __init__(self, base: LoadedModel, config: EngineConfig, loader: Loader | None = None) -> None:
        self.base = base
        self.config = config
        self.loader = loader
        self.tokenizer = base.tokenizer
        self.device = torch.device(config.device)
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        enable_fast_matmul(self.device)
        model = base.model
        self.dtype = resolve_dtype(config.dtype, self.device, next(model.parameters()).dtype)
        model.to(device=self.device, dtype=self.dtype)
        model.eval()
        self.uploads = Uploads(self.device)  # host -> device tensors built by the engine (transfers.py)
        self._lora_batch = LoraBatch(config.max_batch)
        self._lora_batch.uploads = self.uploads
        num_pages = self._num_pages(model)
        self.layers: dict[str, MultiLoraLinear] = wrap_model(
            model, config.target_modules, num_pages, self._lora_batch
        )
        self._shapes = {p: (m.in_features, m.out_features) for p, m in self.layers.items()}
        self.pool_bytes = sum(m.pool_bytes for m in self.layers.values())
        self.runner = ModelRunner(
            model,
            self.device,
            config.max_batch,
            self._lora_batch,
            deterministic=config.deterministic,
            attention=config.attention,
            uploads=self.uploads,
        )
        self.host = HostTier(config.host_budget_bytes)
        self.slots = PagePool(num_pages, config.max_rank)
        self._swapper = Swapper(self.device)
        self._sampling_rows: dict[tuple[int, ...], SamplingRows] = {}
        self.scheduler = Scheduler(config.max_queue, bypass_limit=config.max_batch)
        self._eos = self._eos_ids()

        self._cv = threading.Condition()  # guards the scheduler, _forget and _stopping
        self._model_lock = threading.Lock()  # one forward pass at a time
        self._forget: list[str] = []
        self._active: list[Job] = []  # job i runs in persistent row i of the model runner
        self._ids = itertools.count()
        self._steps = 0
        self._trace: deque[StepRecord] = deque(maxlen=4096)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loading: dict[str, asyncio.Future[PreparedAdapter]] = {}
        self._prefetches: set[asyncio.Task[PreparedAdapter]] = set()
        self._merge_parts: dict[str, set[str]] = {}  # merge key -> the adapter keys it was built from
        self.swaps_in = 0
        self.swap_s_total = 0.0
        self.host_lookups = 0
        self.host_hits = 0
        self.tokens_generated = 0
        self.busy_s = 0.0

    # ---------------------------------------------------------------- adapters

    def add_adapter(self, key: str, weights: AdapterWeights, *, same_weights: bool = False) -> None:
        """Check `weights` against this engine and put them in the host tier under `key`. Re-adding a
        key replaces it for requests submitted afterwards (its slot is forgotten), unless the caller
        knows they are the same weights (`same_weights`: e.g. re-read after a host-tier eviction), which
        keep their slot. Raises ValueError if they do not fit."""
        if key.startswith("merge:"):
            raise ValueError(f"adapter key {key!r}: the 'merge:' prefix is reserved for weighted merges")
        self.host.put(self._prepare(key, weights))
        if same_weights:
            return
        with self._cv:
            self._forget.append(key)
        for merged, parts in list(self._merge_parts.items()):
            if key in parts:  # a merge built from the old weights
                self.host.remove(merged)
                del self._merge_parts[merged]
                with self._cv:
                    self._forget.append(merged)

    def prefetch(self, key: str) -> None:
        """Start loading `key` into the host tier through the loader, without waiting. Called from the
        engine's event loop (or any thread once started); without a started engine it loads now."""
        if key in self.host:
            return
        if self._loop is None:
            asyncio.run(self._host_adapter(key))
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            task = self._loop.create_task(self._host_adapter(key))
            self._prefetches.add(task)  # keep a reference until done; a failed prefetch is logged
            task.add_done_callback(self._prefetch_done)
        else:
            asyncio.run_coroutine_threadsafe(self._host_adapter(key), self._loop)

    def _prefetch_done(self, task: asyncio.Task[PreparedAdapter]) -> None:
        self._prefetches.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("prefetch failed: %s", task.exception())

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._thread = threading.Thread(target=self._worker, name="lora-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The decode loop is running (started, not stopping, its thread not dead)."""
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    async def stop(self) -> None:
        """Stop the decode loop; requests still waiting or running fail with RuntimeError."""
        thread = self._thread
        if thread is None:
            return
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None
        self._loop = None

    # ---------------------------------------------------------------- generation

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Queue `request` and wait for its result. Raises EngineBusy when the queue is full, KeyError
        for an unknown adapter, ValueError for a request this engine cannot serve."""
        if self._thread is None:
            raise RuntimeError("engine is not running: call `await engine.start()` first")
        loop = asyncio.get_running_loop()
        self._check_capacity()
        key, adapter = await self._resolve(request)
        fut: asyncio.Future[GenerationResult] = loop.create_future()

        def settle(outcome: Outcome) -> None:
            loop.call_soon_threadsafe(_settle_future, fut, outcome)

        self._submit(self._make_job(request, key, adapter, settle))
        return await fut

    # ---------------------------------------------------------------- observability

    def stats(self) -> EngineStats:
        with self._cv:
            depth = len(self.scheduler)
        return EngineStats(
            slots=self.slots.info(),
            pool_bytes=self.pool_bytes,
            host_bytes=self.host.bytes,
            host_budget_bytes=self.host.budget_bytes,
            host_count=len(self.host),
            swaps_in=self.swaps_in,
            evictions=self.slots.evictions,
            host_evictions=self.host.evictions,
            slot_hit_rate=self.slots.hits / self.slots.lookups if self.slots.lookups else 0.0,
            host_hit_rate=self.host_hits / self.host_lookups if self.host_lookups else 0.0,
            tokens_generated=self.tokens_generated,
            tokens_per_s=self.tokens_generated / self.busy_s if self.busy_s else 0.0,
            queue_depth=depth,
            running=len(self._active),
            extra={
                "swap_s_total": self.swap_s_total,
                "steps": float(self._steps),
                "kv_cache_bytes": float(self.runner.cache.nbytes),
                "pool_pages": float(self.slots.num_pages),
                "pool_free_pages": float(self.slots.free_pages),
                "adapters_resident": float(self.slots.resident),
                "lora_workspace_bytes": float(self.workspace_bytes),
                "uploads": float(self.uploads.count),
            },
        )

    @property
    def workspace_bytes(self) -> int:
        """Pages gathered for the current batch (distinct adapters whose pages are not one run)."""
        return sum(m.workspace_bytes for m in self.layers.values())

    def recent_steps(self) -> list[StepRecord]:
        """The last forward passes (up to 4096): which requests and adapters each one batched."""
        return list(self._trace)

    # ---------------------------------------------------------------- internals: the decode loop

    def _worker(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._active and not len(self.scheduler):
                    self._cv.wait()
                if self._stopping:
                    break
            self._step()
        error = RuntimeError("engine stopped before the request finished")
        with self._cv:
            waiting = self.scheduler.drain()
        for job in waiting + self._active:
            self._release(job)
            job.on_done(error)
        self._active = []
        self._batch_emptied()

    def _step(self) -> None:
        """Admit waiting requests (swap-ins outside the model lock), prefill them, then one decode step
        for every running row."""
        t0 = time.perf_counter()
        new = self._admit()
        with self._model_lock:
            start = len(self._active)
            self._active += new  # first: if anything below fails, these requests fail with the batch
            try:
                if new:
                    self._swapper.wait()
                    self._prefill(start, new)
                if self._active:
                    self._decode()
            except Exception as exc:  # fail the batch, keep the engine serving
                log.exception("decode loop step failed; failing %d running requests", len(self._active))
                for job in self._active:
                    self._release(job)
                    job.on_done(exc)
                self._active = []
                self._batch_emptied()
        self.busy_s += time.perf_counter() - t0

    def _admit(self) -> list[Job]:
        with self._swapper.lock:
            with self._cv:
                for key in self._forget:
                    self.slots.forget(key)
                self._forget.clear()
                free = self.config.max_batch - len(self._active)
                new = self.scheduler.admit(free, self._place, self._resident) if free > 0 else []
            try:
                self._copy_in(new)
            except Exception as exc:
                log.exception("swap-in failed; failing %d admitted requests", len(new))
                for job in new:
                    self._release(job)
                    job.on_done(exc)
                return []
        # Rows in LoRA group order (widest rank class first, then by adapter): the prefill's rows are
        # then already each adapter's segment, and the layers gather and scatter no activations.
        new.sort(key=lambda j: (-rank_class(j.rank) if j.rank else 1, j.slot))
        return new

    def _prefill(self, start: int, new: list[Job]) -> None:
        """Prefill `new`, already running as rows [start, start + len(new))."""
        uploads = self.uploads.count
        now = time.perf_counter()
        for job in new:
            job.admitted = now
        self._set_rows(start, new)
        record = any(j.record for j in new)
        logits = self.runner.prefill(start, [j.prompt_ids for j in new], record=record)
        if record:
            self._keep_hidden(new)
        tokens = self._sample(new, logits)
        self.runner.tokens[start : start + len(new)] = tokens
        self._record("prefill", new, self.uploads.count - uploads)
        keep = set(self._emit(new, tokens.tolist()))
        self._drop_rows([start + i for i in range(len(new)) if i not in keep])

    def _decode(self) -> None:
        uploads = self.uploads.count
        n = len(self._active)
        record = any(j.record for j in self._active)
        logits = self.runner.decode_rows(n, max(j.kv_len for j in self._active) + 1, record=record)
        if record:
            self._keep_hidden(self._active)
        tokens = self._sample(self._active, logits)
        self.runner.tokens[:n] = tokens  # the next step's inputs, already on the device
        self._record("decode", self._active, self.uploads.count - uploads)
        keep = set(self._emit(self._active, tokens.tolist()))
        self._drop_rows([i for i in range(len(self._active)) if i not in keep])

    def _keep_hidden(self, jobs: list[Job]) -> None:
        """After a pass with record=True: each recording job keeps its row's final hidden states."""
        for job, hidden in zip(jobs, self.runner.hidden, strict=True):
            if job.record:
                job.hidden.append(hidden.clone())  # a copy: a view would keep the whole batch's tensor

    def _sample(self, jobs: list[Job], logits: torch.Tensor) -> torch.Tensor:
        samplers = [j.sampler for j in jobs]
        rows = SamplingRows.for_samplers(self._sampling_rows, samplers, self.uploads)
        return next_token_tensor(logits, samplers, rows)

    def _drop_rows(self, rows: list[int]) -> None:
        """Remove finished rows; the last running row moves into each hole, so rows stay [0, n)."""
        for row in sorted(rows, reverse=True):
            last = len(self._active) - 1
            if row != last:
                self.runner.move_row(last, row, self._active[last].kv_len)
                self._active[row] = self._active[last]
            self._active.pop()
        if rows and not self._active:
            self._batch_emptied()

    def _batch_emptied(self) -> None:
        self.runner.cache.shrink()

    def _emit(self, jobs: list[Job], tokens: list[int]) -> list[int]:
        """Append each row's next token; finish rows that are done. Returns the rows still running."""
        keep = []
        for i, (job, tok) in enumerate(zip(jobs, tokens, strict=True)):
            reason = self._append(job, tok)
            if reason is None:
                keep.append(i)
            else:
                self._finish(job, reason)
        return keep

    def _append(self, job: Job, token: int) -> str | None:
        if token in self._eos:
            return "stop"
        job.output.append(token)
        self.tokens_generated += 1
        if job.request.stop:
            if job.stops is None:
                job.stops = StopChecker(self.tokenizer, job.request.stop)
            if job.stops.push(job.output):  # new text matched: confirm and cut on the full text, once
                text = decode_output(self.tokenizer, job.output)
                cut = find_stop(text, job.request.stop)
                if cut is not None:
                    job.text, job.cut_at_stop = text[:cut], True
                    return "stop"
        return "length" if len(job.output) >= job.request.max_tokens else None

    def _finish(self, job: Job, reason: str) -> None:
        self._release(job)
        now = time.perf_counter()
        text = job.text if job.cut_at_stop else decode_output(self.tokenizer, job.output)
        job.on_done(
            GenerationResult(
                text=text,
                token_ids=list(job.output),
                finish_reason=reason,
                prompt_tokens=len(job.prompt_ids),
                queue_s=job.admitted - job.submitted,
                swap_s=job.swap_s,
                total_s=now - job.submitted,
                hidden=_hidden_states(job) if job.record else None,
            )
        )

    def _record(self, kind: str, jobs: list[Job], uploads: int) -> None:
        self._steps += 1
        self._trace.append(
            StepRecord(self._steps, kind, tuple(j.id for j in jobs), tuple(j.key for j in jobs), uploads)
        )

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.base.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(gen_eos)
        return {int(i) for i in ids if i is not None}


def _settle_future(fut: asyncio.Future[GenerationResult], outcome: Outcome) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


def _hidden_states(job: Job) -> HiddenStates:
    prefill, steps = job.hidden[0], job.hidden[1:]
    decode = torch.stack(steps) if steps else prefill.new_zeros(0, prefill.shape[-1])
    return HiddenStates(list(job.prompt_ids), prefill, decode)
