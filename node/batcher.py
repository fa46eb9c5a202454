"""Micro-batching of on-chain steps: jobs that become ready to claim (or to post) within a short window go
out in one transaction (claimJobs / submitResults), paying the 21,000 base gas, the signer lookup, the stake
update and the signature check once per batch instead of once per job.

A batch is flushed when it holds `max_items` jobs or `window_s` after its first job arrived, whichever comes
first; one job alone waits at most `window_s`. Each waiter gets the batch's outcome (the mined record, or the
exception) and decides about its own job from the receipt: a batch never decides for a job."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    items: list[T] = field(default_factory=list)
    futures: list[asyncio.Future[R]] = field(default_factory=list)
    timer: asyncio.Task | None = None


class Batcher(Generic[T, R]):
    def __init__(self, send: Callable[[list[T]], Awaitable[R]], *, window_s: float, max_items: int) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._send = send
        self.window_s = window_s
        self.max_items = max_items
        self._pending: _Pending[T, R] = _Pending()
        self._tasks: set[asyncio.Task] = set()
        self.batches_sent = 0
        self.items_sent = 0

    async def submit(self, item: T) -> R:
        """Queue `item` for the next batch and wait for that batch's outcome."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        # a waiter cancelled meanwhile (its job was lost) never reads the outcome: mark it read
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        p = self._pending
        p.items.append(item)
        p.futures.append(fut)
        if len(p.items) >= self.max_items:
            self._flush()
        elif p.timer is None:
            p.timer = asyncio.create_task(self._flush_later(p))
        return await asyncio.shield(fut)

    async def _flush_later(self, p: _Pending[T, R]) -> None:
        await asyncio.sleep(self.window_s)
        if self._pending is p:
            self._flush()

    def _flush(self) -> None:
        p, self._pending = self._pending, _Pending()
        if p.timer is not None and p.timer is not asyncio.current_task():
            p.timer.cancel()
        task = asyncio.create_task(self._run(p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, p: _Pending[T, R]) -> None:
        self.batches_sent += 1
        self.items_sent += len(p.items)
        try:
            result = await self._send(p.items)
        except BaseException as e:  # every waiter learns what happened to its batch
            for f in p.futures:
                if not f.done():
                    f.set_exception(e)
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        for f in p.futures:
            if not f.done():
                f.set_result(result)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._pending.timer is not None:
            self._pending.timer.cancel()
