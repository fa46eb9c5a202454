"""Run a trio program in its own thread and call into it from asyncio without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import trio

from node.p2p.errors import NotStartedError

T = TypeVar("T")


class TrioThread:
    """Owns one thread running `trio.run(main)`. `main(nursery)` must return once setup is done and then the
    thread keeps its nursery alive until `stop()`; work from asyncio is started in that nursery."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._ready: Future[None] = Future()
        self._finished: Future[None] = Future()

    @property
    def running(self) -> bool:
        return self._nursery is not None and not self._finished.done()

    async def start(self, setup: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self._name} was already started")
        self._thread = threading.Thread(target=self._run, args=(setup,), name=self._name, daemon=True)
        self._thread.start()
        await asyncio.wrap_future(self._ready)

    def _run(self, setup: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        try:
            trio.run(self._main, setup)
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            if not self._finished.done():
                self._finished.set_exception(exc)
        else:
            if not self._finished.done():
                self._finished.set_result(None)

    async def _main(self, setup: Callable[[trio.Nursery], Awaitable[None]]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await setup(nursery)
            self._ready.set_result(None)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` as a task in the trio thread; cancelling the asyncio caller cancels it."""
        if not self.running or self._token is None or self._nursery is None:
            raise NotStartedError("the P2P node is not running; call `await node.start()` first")
        loop = asyncio.get_running_loop()
        result: asyncio.Future[T] = loop.create_future()
        scope = trio.CancelScope()

        def deliver(value: T | None, error: BaseException | None) -> None:
            if result.done():
                return
            if error is not None:
                result.set_exception(error)
            else:
                result.set_result(value)  # type: ignore[arg-type]

        async def runner() -> None:
            with scope:
                try:
                    value = await fn(*args)
                except trio.Cancelled:
                    loop.call_soon_threadsafe(deliver, None, NotStartedError("the P2P node stopped"))
                    raise
                except Exception as exc:
                    loop.call_soon_threadsafe(deliver, None, exc)
                else:
                    loop.call_soon_threadsafe(deliver, value, None)
                    return
            if scope.cancelled_caught:
                loop.call_soon_threadsafe(deliver, None, asyncio.CancelledError())

        nursery = self._nursery
        trio.from_thread.run_sync(nursery.start_soon, runner, trio_token=self._token)
        try:
            return await result
        except asyncio.CancelledError:
            if self.running:
                trio.from_thread.run_sync(scope.cancel, trio_token=self._token)
            raise

    async def stop(self) -> None:
        """Cancel everything in the trio thread and wait for the thread to end (idempotent)."""
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None and not self._finished.done():
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        await asyncio.to_thread(self._thread.join)
