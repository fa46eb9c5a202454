"""The engine's synchronous entry points (tests, benchmarks, scoring): run requests to completion
without an event loop, and every position's logits of a mixed-adapter batch. Mixed into `Engine`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from inference.engine.messages import GenerationRequest, GenerationResult
from inference.engine.prepared import PreparedAdapter
from inference.engine.sampling import RowSampler
from inference.engine.scheduler import Job, Outcome
from inference.engine.slots import NoFreeSlot

if TYPE_CHECKING:
    from inference.engine.engine import Engine


class EngineSyncMixin:
    def generate_batch_sync(self: Engine, requests: list[GenerationRequest]) -> list[GenerationResult]:
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

    def prompt_logits(
        self: Engine, prompt_ids: list[list[int]], adapters: list[str | None]
    ) -> list[torch.Tensor]:
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
                    with self._swapper.lock:
                        with self._cv:
                            for job in chunk:
                                if not self._place(job):
                                    raise NoFreeSlot(
                                        f"{len(set(adapters))} distinct adapters do not fit the free adapter "
                                        "pages: score fewer at once or raise EngineConfig.pool_budget_bytes"
                                    )
                                placed.append(job)
                        self._copy_in(chunk)
                    self._swapper.wait()
                    self._set_rows(start, chunk)
                    logits = self.runner.prefill(start, [j.prompt_ids for j in chunk], all_logits=True)
                finally:
                    for job in placed:
                        self._release(job)
                out += [logits[i, : len(j.prompt_ids)].cpu() for i, j in enumerate(chunk)]
        return out

    def _resolve_sync(self: Engine, request: GenerationRequest) -> tuple[str | None, PreparedAdapter | None]:
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

    def _resolve_cached(
        self: Engine, request: GenerationRequest
    ) -> tuple[str | None, PreparedAdapter | None]:
        if request.adapter is None:
            return None, None
        self.host_lookups += 1
        self.host_hits += 1
        return request.adapter, self._host_get(request.adapter)
