"""The engine's admission side: adapters into the host tier (prepared, loaded, merged), requests into
jobs and the queue, jobs onto adapter pages (`_place`, with `_cv` held) and adapters copied into those
pages (`_copy_in`, with only the swap lock held: outside the model lock). Mixed into `Engine`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from inference.adapter import AdapterWeights
from inference.engine.lora_layer import NO_ADAPTER
from inference.engine.messages import EngineBusy, GenerationRequest
from inference.engine.prepared import PreparedAdapter, ensemble_key, merge_adapters, prepare_adapter
from inference.engine.sampling import RowSampler
from inference.engine.scheduler import Job, Outcome
from inference.engine.slots import NoFreeSlot
from inference.prompt import check_length, encode_prompt

if TYPE_CHECKING:
    from inference.engine.engine import Engine


class EngineAdmissionMixin:
    def _prepare(self: Engine, key: str, weights: AdapterWeights) -> PreparedAdapter:
        return prepare_adapter(
            key,
            weights,
            self._shapes,
            self.config.max_rank,
            self.dtype,
            pin_memory=self.device.type == "cuda",
        )

    def _host_get(self: Engine, key: str) -> PreparedAdapter:
        adapter = self.host.get(key)
        if adapter is None:
            raise KeyError(f"adapter {key!r} is not in the host tier: call add_adapter or use generate()")
        return adapter

    async def _host_adapter(self: Engine, key: str) -> PreparedAdapter:
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

    async def _load(self: Engine, key: str) -> PreparedAdapter:
        assert self.loader is not None
        adapter = self._prepare(key, await self.loader(key))
        self.host.put(adapter)
        return adapter

    async def _resolve(self: Engine, request: GenerationRequest) -> tuple[str | None, PreparedAdapter | None]:
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
        sampler = RowSampler(request.temperature, request.top_p, request.seed, device=self.device)
        job = Job(next(self._ids), request, key, adapter, ids, sampler, on_done)
        job.record = request.record_hidden or self.config.record_hidden
        return job

    def _check_capacity(self: Engine, incoming: int = 1) -> None:
        with self._cv:
            if len(self.scheduler) + incoming > self.config.max_queue:
                raise EngineBusy(
                    f"engine queue is full ({len(self.scheduler)} of {self.config.max_queue} "
                    "waiting): retry later or raise EngineConfig.max_queue"
                )

    def _submit(self: Engine, job: Job) -> None:
        with self._cv:
            if self._stopping:
                raise RuntimeError("engine is stopping")
            self.scheduler.submit(job)
            self._cv.notify()

    def _place(self: Engine, job: Job) -> bool:
        """Pin pages for `job` (call with `_cv` held); on a miss the copy is left to `_copy_in`. False
        when pinned adapters leave too few pages."""
        if job.adapter is None or job.key is None:
            job.slot = NO_ADAPTER
            return True
        try:
            handle, hit = self.slots.acquire(job.key, job.adapter.rank)
        except NoFreeSlot:
            return False
        job.slot = handle
        job.copy_pending = not hit
        return True

    def _copy_in(self: Engine, jobs: list[Job]) -> None:
        """Copy the adapters of `jobs` that missed into their pages (call with `_swapper.lock` held,
        no other engine lock needed: the pages are pinned by these jobs and read by no running row)."""
        for job in jobs:
            if not job.copy_pending or job.adapter is None:
                continue
            t0 = time.perf_counter()
            pages = self.slots.pages(job.slot)
            adapter = job.adapter

            def write(pages: list[int] = pages, adapter: PreparedAdapter = adapter) -> None:
                for path, layer in self.layers.items():
                    pair = adapter.layers.get(path)
                    layer.write_pages(pages, *(pair if pair is not None else (None, None)))

            self._swapper.copy(write)
            self._lora_batch.set_adapter(job.slot, pages)
            job.copy_pending = False
            job.swap_s = time.perf_counter() - t0
            self.swap_s_total += job.swap_s
            self.swaps_in += 1

    def _resident(self: Engine, key: str | None) -> bool:
        return key is None or self.slots.lookup(key) is not None

    def _release(self: Engine, job: Job) -> None:
        if job.slot != NO_ADAPTER:
            with self._cv:
                if job.copy_pending and job.key is not None:  # pages reserved, never filled: not resident
                    self.slots.forget(job.key)
                    job.copy_pending = False
                self.slots.release(job.slot)
            job.slot = NO_ADAPTER

    def _set_rows(self: Engine, start: int, jobs: list[Job]) -> None:
        for row, job in enumerate(jobs, start):
            self._lora_batch.set_row(row, job.slot, job.rank)

    def _num_pages(self: Engine, model: torch.nn.Module) -> int:
        """Rank rows the pool holds: pool_budget_bytes over one rank row of every wrapped layer."""
        element = torch.empty((), dtype=self.dtype).element_size()
        targets = self.config.target_modules
        row = sum(
            (m.in_features + m.out_features) * element
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets
        )
        if row == 0:  # wrap_model names the fix
            return self.config.max_rank
        budget = self.config.pool_budget_bytes or self.config.max_slots * self.config.max_rank * row
        pages = budget // row
        if pages < self.config.max_rank:
            raise ValueError(
                f"EngineConfig.pool_budget_bytes={budget} holds {pages} rank rows ({row} bytes each), fewer "
                f"than one adapter of max_rank={self.config.max_rank}: raise the budget to at least "
                f"{row * self.config.max_rank} or lower max_rank"
            )
        return pages
