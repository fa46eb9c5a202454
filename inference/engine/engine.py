"""The multi-LoRA engine: one shared base model, a fixed pool of adapter slots on the device, a host
tier behind it, and a decode loop in a worker thread that batches rows of different adapters."""

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
from inference.engine.config import EngineConfig
from inference.engine.host_tier import HostTier
from inference.engine.lora_layer import NO_ADAPTER, LoraBatch, MultiLoraLinear, wrap_model
from inference.engine.messages import (
    EngineBusy,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    HiddenStates,
    StepRecord,
)
from inference.engine.model_runner import ModelRunner
from inference.engine.prepared import PreparedAdapter, ensemble_key, merge_adapters, prepare_adapter
from inference.engine.sampling import RowSampler, StopChecker, find_stop, next_tokens
from inference.engine.scheduler import Job, Outcome, Scheduler
from inference.engine.slots import NoFreeSlot, SlotPool
from inference.models import LoadedModel
from inference.prompt import check_length, decode_output, encode_prompt

log = logging.getLogger(__name__)

Loader = Callable[[str], Awaitable[AdapterWeights]]


class Engine:
    """Takes ownership of `base.model`: its target linear layers are wrapped in place, once."""

    def __init__(self, base: LoadedModel, config: EngineConfig, loader: Loader | None = None) -> None:
        self.base = base
        self.config = config
        self.loader = loader
        self.tokenizer = base.tokenizer
        self.device = torch.device(config.device)
        if config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        model = base.model
        model.to(device=self.device, dtype=config.dtype) if config.dtype else model.to(self.device)
        model.eval()
        self.dtype = next(model.parameters()).dtype
        self._lora_batch = LoraBatch(config.max_batch)
        self.layers: dict[str, MultiLoraLinear] = wrap_model(
            model, config.target_modules, config.max_slots, config.max_rank, self._lora_batch
        )
        self._shapes = {p: (m.in_features, m.out_features) for p, m in self.layers.items()}
        self.pool_bytes = sum(m.pool_bytes for m in self.layers.values())
        self.runner = ModelRunner(
            model, self.device, config.max_batch, self._lora_batch, deterministic=config.deterministic
        )
        self.host = HostTier(config.host_budget_bytes)
        self.slots = SlotPool(config.max_slots)
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

    def generate_batch_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        """Run `requests` to completion and return their results in order (tests, benchmarks). Uses the
        worker when started, else decodes in the calling thread. Raises the first request's error."""
        outcomes: list[Outcome | None] = [None] * len(requests)
        done = threading.Event()
        remaining = [len(requests)]
        lock = threading.Lock()

        def settle_at(i: int) -> Callable[[Outcome], None]:
            def settle(outcome: Outcome) -> None:
                outcomes[i] = outcome
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

            return settle

        jobs = []
        for i, req in enumerate(requests):
            key, adapter = self._resolve_sync(req)
            jobs.append(self._make_job(req, key, adapter, settle_at(i)))
        self._check_capacity(len(jobs))
        for job in jobs:
            self._submit(job)
        if not requests:
            return []
        if self._thread is None:
            while not done.is_set():
                self._step()
        else:
            done.wait()
        for o in outcomes:
            if isinstance(o, BaseException):
                raise o
        return [o for o in outcomes if isinstance(o, GenerationResult)]

    def prompt_logits(self, prompt_ids: list[list[int]], adapters: list[str | None]) -> list[torch.Tensor]:
        """Logits [len(prompt), vocab] at every prompt position, all rows in one mixed-adapter batch
        (adapters must be in the host tier). For scoring and for checking the engine against PEFT."""
        rows = self.config.max_batch
        jobs = [
            Job(
                -1,
                GenerationRequest("", a, max_tokens=1),
                a,
                self._host_get(a) if a else None,
                ids,
                RowSampler(0.0, 1.0, None),
                lambda _: None,
            )
            for ids, a in zip(prompt_ids, adapters, strict=True)
        ]
        out: list[torch.Tensor] = []
        with self._model_lock:
            start = len(self._active)  # rows past the running ones are free scratch space
            if start == rows:
                raise RuntimeError(f"all {rows} batch rows are running requests: retry when some finish")
            for first in range(0, len(jobs), rows - start):
                chunk = jobs[first : first + rows - start]
                placed = []
                try:
                    for job in chunk:
                        if not self._place(job):
                            raise NoFreeSlot(f"more distinct adapters ({len(set(adapters))}) than free slots")
                        placed.append(job)
                    self._set_rows(start, chunk)
                    logits = self.runner.prefill(start, [j.prompt_ids for j in chunk], all_logits=True)
                finally:
                    for job in placed:
                        self._release(job)
                out += [logits[i, : len(j.prompt_ids)].cpu() for i, j in enumerate(chunk)]
        return out

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
            },
        )

    def recent_steps(self) -> list[StepRecord]:
        """The last forward passes (up to 4096): which requests and adapters each one batched."""
        return list(self._trace)

    # ---------------------------------------------------------------- internals: admission

    def _prepare(self, key: str, weights: AdapterWeights) -> PreparedAdapter:
        return prepare_adapter(
            key,
            weights,
            self._shapes,
            self.config.max_rank,
            self.dtype,
            pin_memory=self.device.type == "cuda",
        )

    def _host_get(self, key: str) -> PreparedAdapter:
        adapter = self.host.get(key)
        if adapter is None:
            raise KeyError(f"adapter {key!r} is not in the host tier: call add_adapter or use generate()")
        return adapter

    async def _host_adapter(self, key: str) -> PreparedAdapter:
        self.host_lookups += 1
        adapter = self.host.get(key)
        if adapter is not None:
            self.host_hits += 1
            return adapter
        if self.loader is None:
            raise KeyError(
                f"adapter {key!r} is not in the host tier and the engine has no loader: "
                "call add_adapter first or construct the Engine with a loader"
            )
        pending = self._loading.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key))
            self._loading[key] = pending
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return await asyncio.shield(pending)

    async def _load(self, key: str) -> PreparedAdapter:
        assert self.loader is not None
        adapter = self._prepare(key, await self.loader(key))
        self.host.put(adapter)
        return adapter

    async def _resolve(self, request: GenerationRequest) -> tuple[str | None, PreparedAdapter | None]:
        if request.adapters:
            key = ensemble_key(request.adapters)
            merged = self.host.get(key)
            if merged is None:
                parts = [(await self._host_adapter(k), w) for k, w in request.adapters]
                merged = merge_adapters(key, parts, self.config.max_rank)
                self.host.put(merged)
                self._merge_parts[key] = {k for k, _ in request.adapters}
            return key, merged
        if request.adapter is None:
            return None, None
        return request.adapter, await self._host_adapter(request.adapter)

    def _make_job(
        self,
        request: GenerationRequest,
        key: str | None,
        adapter: PreparedAdapter | None,
        on_done: Callable[[Outcome], None],
    ) -> Job:
        ids = encode_prompt(self.tokenizer, request.prompt, chat=request.chat)
        check_length(len(ids), request.max_tokens, self.runner.max_positions)  # PromptRejected
        sampler = RowSampler(request.temperature, request.top_p, request.seed)
        job = Job(next(self._ids), request, key, adapter, ids, sampler, on_done)
        job.record = request.record_hidden or self.config.record_hidden
        return job

    def _check_capacity(self, incoming: int = 1) -> None:
        with self._cv:
            if len(self.scheduler) + incoming > self.config.max_queue:
                raise EngineBusy(
                    f"engine queue is full ({len(self.scheduler)} of {self.config.max_queue} "
                    "waiting): retry later or raise EngineConfig.max_queue"
                )

    def _submit(self, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is stopping")
            self.scheduler.submit(job)
            self._cv.notify()

    def _place(self, job: Job) -> bool:
        """Pin a slot for `job`, copying its adapter in on a miss. False when every slot is pinned."""
        if job.adapter is None or job.key is None:
            job.slot = NO_ADAPTER
            return True
        try:
            slot, hit = self.slots.acquire(job.key)
        except NoFreeSlot:
            return False
        if not hit:
            t0 = time.perf_counter()
            for path, layer in self.layers.items():
                pair = job.adapter.layers.get(path)
                layer.write_slot(slot, *(pair if pair is not None else (None, None)))
            job.swap_s = time.perf_counter() - t0
            self.swap_s_total += job.swap_s
            self.swaps_in += 1
        job.slot = slot
        return True

    def _resident(self, key: str | None) -> bool:
        return key is None or self.slots.lookup(key) is not None

    def _release(self, job: Job) -> None:
        if job.slot != NO_ADAPTER:
            self.slots.release(job.slot)
            job.slot = NO_ADAPTER

    def _set_rows(self, start: int, jobs: list[Job]) -> None:
        for row, job in enumerate(jobs, start):
            self._lora_batch.set_row(row, job.slot, job.rank)

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
        """Admit waiting requests (prefill), then one decode step for every running row."""
        t0 = time.perf_counter()
        with self._model_lock:
            try:
                self._admit_and_prefill()
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

    def _admit_and_prefill(self) -> None:
        with self._cv:
            for key in self._forget:
                self.slots.forget(key)
            self._forget.clear()
            free = self.config.max_batch - len(self._active)
            new = self.scheduler.admit(free, self._place, self._resident) if free > 0 else []
        if not new:
            return
        now = time.perf_counter()
        start = len(self._active)
        for job in new:
            job.admitted = now
        self._set_rows(start, new)
        self._active += new  # before the forward pass: if it fails, these requests fail with the batch
        record = any(j.record for j in new)
        logits = self.runner.prefill(start, [j.prompt_ids for j in new], record=record)
        if record:
            self._keep_hidden(new)
        self._record("prefill", new)
        keep = set(self._emit(new, logits))
        self._drop_rows([start + i for i in range(len(new)) if i not in keep])

    def _decode(self) -> None:
        tokens = torch.tensor([j.output[-1] for j in self._active], dtype=torch.long)
        record = any(j.record for j in self._active)
        logits = self.runner.decode(tokens, [j.kv_len for j in self._active], record=record)
        if record:
            self._keep_hidden(self._active)
        self._record("decode", self._active)
        keep = set(self._emit(self._active, logits))
        self._drop_rows([i for i in range(len(self._active)) if i not in keep])

    def _keep_hidden(self, jobs: list[Job]) -> None:
        """After a pass with record=True: each recording job keeps its row's final hidden states."""
        for job, hidden in zip(jobs, self.runner.hidden, strict=True):
            if job.record:
                job.hidden.append(hidden.clone())  # a copy: a view would keep the whole batch's tensor

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

    def _emit(self, jobs: list[Job], logits: torch.Tensor) -> list[int]:
        """Append each row's next token; finish rows that are done. Returns the rows still running."""
        keep = []
        for i, (job, tok) in enumerate(
            zip(jobs, next_tokens(logits, [j.sampler for j in jobs]), strict=True)
        ):
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

    def _record(self, kind: str, jobs: list[Job]) -> None:
        self._steps += 1
        self._trace.append(
            StepRecord(self._steps, kind, tuple(j.id for j in jobs), tuple(j.key for j in jobs))
        )

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.base.model, "generation_config", None), "eos_token_id", None)
        if isinstance(gen_eos, int):
            ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            ids.update(gen_eos)
        return {int(i) for i in ids if i is not None}

    def _resolve_sync(self, request: GenerationRequest) -> tuple[str | None, PreparedAdapter | None]:
        needed = [k for k, _ in request.adapters] or ([request.adapter] if request.adapter else [])
        if all(k in self.host for k in needed):
            return asyncio.run(self._resolve(request)) if request.adapters else self._resolve_cached(request)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._resolve(request))
        raise RuntimeError(
            "generate_batch_sync needs the loader but runs inside an event loop: "
            "use `await engine.generate()`"
        )

    def _resolve_cached(self, request: GenerationRequest) -> tuple[str | None, PreparedAdapter | None]:
        if request.adapter is None:
            return None, None
        self.host_lookups += 1
        self.host_hits += 1
        return request.adapter, self._host_get(request.adapter)


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
