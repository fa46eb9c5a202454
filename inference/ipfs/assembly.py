"""A file put together from verified blocks that arrive in any order: each block is written to its offset
(in memory or straight into the file that becomes the disk-tier entry) and fed to the file's sha256 once
every byte before it has been fed. Both happen in a worker thread, in file order, a batch of blocks at a
time: pwritev and hashlib release the GIL, so the event loop keeps reading sockets meanwhile. A block's
bytes are copied exactly once, into the sink; blocks wait in `_pending` only until the prefix reaches
them. Only blocks already checked against their CID may be put here."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

from .blockdata import Block, Buffer, parts_of, pwrite_all
from .errors import DagFormatError

THREAD_WORK_MIN = 64 << 10  # smaller batches are written and hashed on the loop: a thread hop costs more
MAX_BATCH = 16  # blocks per worker-thread job (4 MiB of 256 KiB chunks): drain() sees progress often


class Sink(Protocol):
    def write(self, offset: int, parts: tuple[Buffer, ...]) -> None: ...
    def data(self) -> bytearray | None: ...
    def close(self) -> None: ...


class MemorySink:
    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)

    def write(self, offset: int, parts: tuple[Buffer, ...]) -> None:
        for part in parts:
            self._view[offset : offset + len(part)] = part
            offset += len(part)

    def data(self) -> bytearray:
        return self.buffer

    def close(self) -> None:
        self._view.release()


class FileSink:
    """Blocks written at their offsets into a file (the page cache holds them, not this process). Writes
    come from a worker thread: close() waits for the one in progress, so no write can ever land in
    another file that reused the descriptor number."""

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._lock = threading.Lock()
        os.ftruncate(self._fd, size)

    def write(self, offset: int, parts: tuple[Buffer, ...]) -> None:
        with self._lock:
            if self._fd < 0:
                raise OSError(errno.EBADF, "the fetch was abandoned: its file is closed")
            pwrite_all(self._fd, offset, parts)

    def data(self) -> None:
        return None

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Assembly:
    def __init__(self, size: int, sink: Sink) -> None:
        self.size = size
        self.sink = sink
        self.filled = 0  # bytes put (verified and placed), in any order
        self.sha256 = hashlib.sha256()
        self._pending: dict[int, Block] = {}  # offset -> placed bytes not yet written and hashed
        self._done = 0  # bytes written and hashed: the contiguous prefix
        self._frontier = 0  # end of the contiguous prefix placed so far (>= _done)
        self._progress = asyncio.Event()
        self._drained = asyncio.Event()
        self._failure: BaseException | None = None  # why the writer stopped early

    def put(self, offset: int, block: Block) -> None:
        """Place a verified block at `offset` (the offsets come from the hash-authenticated parents)."""
        if offset + len(block) > self.size:
            raise DagFormatError(f"the DAG places bytes past the declared file size {self.size}")
        if not len(block):
            return
        self.filled += len(block)
        self._pending[offset] = block
        if offset == self._frontier:
            while (ahead := self._pending.get(self._frontier)) is not None:
                self._frontier += len(ahead)
            self._progress.set()

    async def drain(self, limit: int) -> None:
        """Wait while more than `limit` placed bytes wait for the writer with no gap before them (they
        will be written, so this cannot wait for ever). Keeping this backlog small keeps the received
        chunks few and cache-warm: memory freed soon is memory reused without page faults."""
        while self._frontier - self._done > limit:
            if self._failure is not None:  # the writer is gone: nothing will ever drain
                if isinstance(self._failure, Exception):
                    raise OSError(
                        getattr(self._failure, "errno", None) or errno.EIO,
                        f"writing the fetched file failed ({self._failure}); check the free space and "
                        f"permissions of the adapter cache folder",
                    ) from self._failure
                raise asyncio.CancelledError()
            self._drained.clear()
            await self._drained.wait()

    async def run(self) -> None:
        """Write and hash the contiguous prefix as it grows, until the whole file is done."""
        try:
            await self._run()
        except BaseException as exc:
            self._failure = exc
            self._drained.set()  # wake the readers waiting for room: they must fail, not wait
            raise

    async def _run(self) -> None:
        while self._done < self.size:
            batch: list[tuple[int, Block]] = []
            end = self._done
            while end < self._frontier and len(batch) < MAX_BATCH:
                block = self._pending.pop(end)
                batch.append((end, block))
                end += len(block)
            if not batch:
                self._progress.clear()
                await self._progress.wait()
                continue
            if end - self._done < THREAD_WORK_MIN:
                self._write_and_hash(batch)
            else:
                job = asyncio.get_running_loop().run_in_executor(None, self._write_and_hash, batch)
                try:
                    await asyncio.shield(job)
                except asyncio.CancelledError:
                    # never leave a thread writing into a file the caller is about to close
                    await asyncio.gather(job, return_exceptions=True)
                    raise
            self._done = end
            self._drained.set()

    def _write_and_hash(self, batch: list[tuple[int, Block]]) -> None:
        for offset, block in batch:
            parts = parts_of(block)
            self.sink.write(offset, parts)
            for part in parts:
                self.sha256.update(part)
