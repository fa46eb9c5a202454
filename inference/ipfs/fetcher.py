"""Verified fetching of UnixFS files and adapter directories, block by block, from sources in order.

Trust model: the root CID comes from the chain, so every block below it is authenticated by its hash the
moment it arrives. A source that returns a wrong, truncated or oversize block is counted as failed and
the next source is asked; the publisher is untrusted too, so the DAG's own claims (sizes, names, shape)
are checked against the caller's limits before the bytes they describe are downloaded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import os
import random
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .cid import InvalidCidError, ParsedCid, parse_cid
from .errors import (
    BlockIntegrityError,
    DagFormatError,
    FetchError,
    SizeLimitError,
    SourceError,
    SourcesExhaustedError,
    UnsafeNameError,
)
from .sources import (
    MAX_BLOCK_SIZE,
    THREAD_HASH_MIN,
    BlockSource,
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    SourceStats,
    block_matches,
)
from .unixfs import FileChild, FileNode, UnixFSError, parse_directory_block, parse_file_block

__all__ = [
    "ADAPTER_FILES",
    "BlockIntegrityError",
    "BlockSource",
    "DagFormatError",
    "FetchError",
    "FetchOptions",
    "FetchedFile",
    "GatewaySource",
    "KuboRpcSource",
    "LocalStoreSource",
    "SizeLimitError",
    "SourceStats",
    "SourcesExhaustedError",
    "UnsafeNameError",
    "fetch_adapter",
    "fetch_adapter_dir",
    "fetch_file",
]

T = TypeVar("T")
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})
MAX_DEPTH = 16  # 174^16 chunks: no honest file is deeper


@dataclass(frozen=True)
class FetchedFile:
    data: bytes | bytearray | None  # in memory (a bytearray when assembled); None when written to `path`
    sha256: bytes
    size: int
    path: Path | None = None


@dataclass(frozen=True)
class FetchOptions:
    timeout_s: float = 30.0  # per block request attempt
    car_timeout_s: float = 300.0  # for a whole-DAG CAR request
    attempts: int = 3  # per source, for transient errors (timeouts, 5xx)
    backoff_s: float = 0.2  # first retry delay; doubles, with jitter, up to max_backoff_s
    max_backoff_s: float = 2.0
    concurrency: int = 8  # blocks in flight at once


def _takes_max_size(source: BlockSource) -> bool:
    return _class_takes_max_size(type(source)) if hasattr(type(source), "get_block") else False


@functools.cache
def _class_takes_max_size(cls: type) -> bool:
    try:
        return "max_size" in inspect.signature(cls.get_block).parameters
    except (TypeError, ValueError):
        return False


def source_stats(source: BlockSource) -> SourceStats:
    """The source's counters (attached on first use to sources that do not keep their own)."""
    stats = getattr(source, "stats", None)
    if not isinstance(stats, SourceStats):
        stats = SourceStats()
        source.stats = stats  # type: ignore[misc]
    return stats


def source_name(source: BlockSource) -> str:
    return str(getattr(source, "name", None) or type(source).__name__)


def check_entry_name(name: str, expected: frozenset[str]) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00") or ".." in name:
        raise UnsafeNameError(f"directory entry {name!r} is not a safe file name; refusing the adapter")
    if name not in expected:
        raise UnsafeNameError(
            f"unexpected directory entry {name!r}; an adapter holds exactly {sorted(expected)}",
            reason="unexpected-entry",
        )


class _Fetch:
    """State of one fetch: the byte budget, blocks already delivered by a CAR, the concurrency limit."""

    def __init__(self, sources: Sequence[BlockSource], max_bytes: int, options: FetchOptions) -> None:
        if not sources:
            raise FetchError("no block sources: configure gateways or a Kubo RPC URL", reason="no-sources")
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.sources = list(sources)
        self.max_bytes = max_bytes
        self.options = options
        self.received = 0
        self.blocks: dict[bytes, bytes] = {}  # digest -> verified block
        self._inflight: dict[bytes, asyncio.Future[bytes]] = {}
        # While a CAR streams in, a block it will probably carry is awaited rather than requested again.
        self._car_streaming = False
        self._car_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._limit = asyncio.Semaphore(options.concurrency)

    async def gather(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        """Like asyncio.gather, but the first failure cancels the rest instead of leaving them running."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def close(self) -> None:
        """Cancel downloads nobody waits for any more (after a failure elsewhere in the DAG)."""
        pending = list(self._inflight.values())
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _car_sources(self) -> list[GatewaySource]:
        return [s for s in self.sources if isinstance(s, GatewaySource) and s.supports_car]

    async def _stream_car(self, root: ParsedCid) -> None:
        """Ask CAR-capable gateways, in order, for the whole DAG in one response; stop at the first that
        delivers it all. Blocks that arrived before a failure were verified and are kept. Runs alongside
        the DAG walk (see `streaming_car`), which takes each block the moment it is verified."""
        try:
            for source in self._car_sources():
                stats = source_stats(source)
                stats.requests += 1
                try:
                    async with asyncio.timeout(self.options.car_timeout_s):
                        async for cid, data in source.get_car(root, max_bytes=self.max_bytes):
                            if cid.digest not in self.blocks:
                                self.blocks[cid.digest] = data
                                stats.bytes_received += len(data)
                                waiter = self._car_waiters.pop(cid.digest, None)
                                if waiter is not None and not waiter.done():
                                    waiter.set_result(None)
                    return
                except TimeoutError:
                    self._fail(
                        source,
                        SourceError(
                            f"{source.name}: CAR not complete within {self.options.car_timeout_s}s",
                            reason="timeout",
                        ),
                    )
                except FetchError as exc:
                    self._fail(source, exc)
        finally:
            self._car_streaming = False
            for waiter in self._car_waiters.values():  # what the CAR did not bring is fetched per block
                if not waiter.done():
                    waiter.set_result(None)
            self._car_waiters.clear()

    @contextlib.asynccontextmanager
    async def streaming_car(self, root: ParsedCid) -> AsyncIterator[None]:
        """Stream the CAR (if any source offers one) while the body walks the DAG."""
        if not self._car_sources():
            yield
            return
        self._car_streaming = True  # before the task first runs: the walk's first block waits for the CAR
        car = asyncio.ensure_future(self._stream_car(root))
        try:
            yield
        finally:
            if not car.done():
                car.cancel()
            await asyncio.gather(car, return_exceptions=True)

    def _fail(self, source: BlockSource, exc: FetchError) -> None:
        stats = source_stats(source)
        stats.failures += 1
        stats.last_error = f"{exc.reason}: {exc}"

    async def block(self, cid: ParsedCid, cap: int) -> bytes:
        cached = self.blocks.get(cid.digest)
        if cached is not None:
            return cached
        if self._car_streaming:
            waiter = self._car_waiters.get(cid.digest)
            if waiter is None:
                waiter = self._car_waiters[cid.digest] = asyncio.get_running_loop().create_future()
            await asyncio.shield(waiter)
            cached = self.blocks.get(cid.digest)
            if cached is not None:
                return cached
        pending = self._inflight.get(cid.digest)
        if pending is not None:  # the same block linked twice (repeated chunk): download it once
            return await asyncio.shield(pending)
        cap = min(cap, MAX_BLOCK_SIZE, self.max_bytes - self.received)
        if cap <= 0:
            raise SizeLimitError(f"the DAG exceeds the cap of {self.max_bytes} bytes")
        task = asyncio.ensure_future(self._download(cid, cap))
        self._inflight[cid.digest] = task
        try:
            return await asyncio.shield(task)
        finally:
            self._inflight.pop(cid.digest, None)

    async def _download(self, cid: ParsedCid, cap: int) -> bytes:
        async with self._limit:
            data = await self._from_sources(cid, cap)
        self.blocks[cid.digest] = data
        self.received += len(data)
        if self.received > self.max_bytes:
            raise SizeLimitError(
                f"the DAG exceeds the cap of {self.max_bytes} bytes; raise the cap only "
                f"if adapters this large are expected"
            )
        return data

    async def _attempt(self, source: BlockSource, cid: ParsedCid, cap: int) -> bytes:
        name = source_name(source)
        try:
            async with asyncio.timeout(self.options.timeout_s):
                if _takes_max_size(source):
                    data = await source.get_block(cid.text, max_size=cap)  # type: ignore[call-arg]
                else:
                    data = await source.get_block(cid.text)
        except TimeoutError as exc:
            raise SourceError(
                f"{name}: no answer within {self.options.timeout_s}s", reason="timeout"
            ) from exc
        except FetchError:
            raise
        except Exception as exc:  # a third-party source's own error type: still just that source failing
            reason = "not-found" if "unavailable" in type(exc).__name__.lower() else "source-error"
            raise SourceError(f"{name}: {type(exc).__name__}: {exc}", reason=reason, retryable=False) from exc
        if len(data) > cap:
            raise SizeLimitError(f"{name}: {len(data)} bytes for {cid}, the limit is {cap}")
        if not await block_matches(cid, data):
            raise BlockIntegrityError(f"{name} returned {len(data)} bytes that do not hash to {cid}")
        return data

    async def _from_sources(self, cid: ParsedCid, cap: int) -> bytes:
        failures: dict[str, FetchError] = {}
        for source in self.sources:
            stats = source_stats(source)
            delay = self.options.backoff_s
            for attempt in range(1, self.options.attempts + 1):
                stats.requests += 1
                try:
                    data = await self._attempt(source, cid, cap)
                except FetchError as exc:
                    self._fail(source, exc)
                    failures[source_name(source)] = exc
                    retry = isinstance(exc, SourceError) and exc.retryable and attempt < self.options.attempts
                    if not retry:
                        break
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, self.options.max_backoff_s)
                    continue
                stats.bytes_received += len(data)
                return data
        raise SourcesExhaustedError(cid.text, failures)

    async def file(
        self, cid: ParsedCid, *, cap: int, filesize: int | None = None, dest: Path | None = None
    ) -> FetchedFile:
        """The file under `cid`, its blocks verified as they arrive and placed at their offsets, in one
        buffer of the size the (hash-authenticated) root declares or straight into the file `dest`; the
        sha256 is fed in file order while later blocks are still arriving, so it costs no second pass."""
        block = await self.block(cid, cap)
        node = self._parse(cid, block)
        if filesize is not None and node.filesize != filesize:
            raise DagFormatError(f"{cid} holds {node.filesize} file bytes, its parent says {filesize}")
        if node.filesize > self.max_bytes:
            raise SizeLimitError(
                f"{cid} declares a file of {node.filesize} bytes, the cap is {self.max_bytes}"
            )
        sink: _Sink = _FileSink(dest, node.filesize) if dest is not None else _MemorySink(node.filesize)
        try:
            assembly = _Assembly(node.filesize, sink)
            hasher = asyncio.ensure_future(assembly.hash_in_order())
            try:
                await self._place(assembly, node, 0, depth=0)
                if assembly.filled != node.filesize:
                    raise DagFormatError(f"{cid}: the DAG has {assembly.filled} of {node.filesize} bytes")
                await hasher
            finally:
                if not hasher.done():
                    hasher.cancel()
                    await asyncio.gather(hasher, return_exceptions=True)
        finally:
            sink.close()
        return FetchedFile(sink.data(), assembly.sha256.digest(), node.filesize, dest)

    def _parse(self, cid: ParsedCid, block: bytes) -> FileNode:
        try:
            return parse_file_block(cid, block)
        except UnixFSError as exc:
            raise DagFormatError(str(exc)) from exc

    async def _place(self, assembly: _Assembly, node: FileNode, offset: int, *, depth: int) -> None:
        """Write `node`'s bytes at `offset`, its children after them, fetched concurrently. Each child's
        offset follows from its siblings' sizes, which the parse checked add up to the parent's."""
        assembly.put(offset, node.data)
        offset += len(node.data)
        placements = []
        for child in node.children:
            placements.append(self._place_child(assembly, child, offset, depth=depth + 1))
            offset += child.filesize
        await self.gather(placements)

    async def _place_child(self, assembly: _Assembly, child: FileChild, offset: int, *, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise DagFormatError(f"file DAG deeper than {MAX_DEPTH} levels at {child.cid}")
        # A raw leaf's Tsize is its exact length, a node's Tsize bounds its block: a response beyond what
        # the (hash-authenticated) parent says cannot be right, so it is cut off there.
        cap = child.tsize if child.tsize > 0 else MAX_BLOCK_SIZE
        node = self._parse(child.cid, await self.block(child.cid, cap))
        if node.filesize != child.filesize:
            raise DagFormatError(
                f"{child.cid} holds {node.filesize} file bytes, its parent says {child.filesize}"
            )
        if not node.children:
            self.blocks.pop(child.cid.digest, None)  # placed: the sink holds it now
        await self._place(assembly, node, offset, depth=depth)


class _Sink(Protocol):
    def write(self, offset: int, data: bytes) -> None: ...
    def data(self) -> bytearray | None: ...
    def close(self) -> None: ...


class _MemorySink:
    def __init__(self, size: int) -> None:
        self.buffer = bytearray(size)
        self._view = memoryview(self.buffer)

    def write(self, offset: int, data: bytes) -> None:
        self._view[offset : offset + len(data)] = data

    def data(self) -> bytearray:
        return self.buffer

    def close(self) -> None:
        self._view.release()


class _FileSink:
    """Blocks written at their offsets into a file (the page cache holds them, not this process)."""

    def __init__(self, path: Path, size: int) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._fd, size)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def data(self) -> None:
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Assembly:
    """A file's bytes placed at their offsets as blocks arrive in any order, and a sha256 fed with each
    block once every byte before it has been fed (in a worker thread: hashlib releases the GIL). Blocks
    wait in `_pending` only until the contiguous prefix reaches them."""

    def __init__(self, size: int, sink: _Sink) -> None:
        self.size = size
        self.sink = sink
        self.filled = 0
        self.sha256 = hashlib.sha256()
        self._pending: dict[int, bytes] = {}  # offset -> placed bytes not yet hashed
        self._hashed = 0
        self._progress = asyncio.Event()

    def put(self, offset: int, data: bytes) -> None:
        if offset + len(data) > self.size:
            raise DagFormatError(f"the DAG places bytes past the declared file size {self.size}")
        if not data:
            return
        self.sink.write(offset, data)
        self.filled += len(data)
        self._pending[offset] = data
        self._progress.set()

    async def hash_in_order(self) -> None:
        while self._hashed < self.size:
            pieces, end = [], self._hashed
            while (piece := self._pending.pop(end, None)) is not None:
                pieces.append(piece)
                end += len(piece)
            if not pieces:
                self._progress.clear()
                await self._progress.wait()
                continue
            if end - self._hashed < THREAD_HASH_MIN:
                _feed(self.sha256, pieces)
            else:
                await asyncio.to_thread(_feed, self.sha256, pieces)
            self._hashed = end


def _feed(sha: hashlib._Hash, pieces: list[bytes]) -> None:
    for piece in pieces:
        sha.update(piece)


def _root(cid: str) -> ParsedCid:
    try:
        return parse_cid(cid)
    except InvalidCidError as exc:
        raise FetchError(str(exc), reason="bad-cid") from exc


@contextlib.asynccontextmanager
async def _fetching(
    root: ParsedCid, sources: Sequence[BlockSource], max_bytes: int, options: FetchOptions | None
) -> AsyncIterator[_Fetch]:
    """One fetch of the DAG under `root`: a CAR streamed alongside if a source offers one, and every
    download left over cancelled at the end."""
    fetch = _Fetch(sources, max_bytes, options or FetchOptions())
    try:
        async with fetch.streaming_car(root):
            yield fetch
    finally:
        await fetch.close()


async def fetch_file(
    cid: str, sources: Sequence[BlockSource], *, max_bytes: int, options: FetchOptions | None = None
) -> bytes | bytearray:
    """The bytes of the UnixFS file at `cid`, every block verified; at most max_bytes downloaded."""
    root = _root(cid)
    async with _fetching(root, sources, max_bytes, options) as fetch:
        return (await fetch.file(root, cap=MAX_BLOCK_SIZE)).data


async def fetch_adapter(
    root_cid: str,
    sources: Sequence[BlockSource],
    *,
    max_bytes: int,
    expected: frozenset[str] = ADAPTER_FILES,
    options: FetchOptions | None = None,
    into: Path | None = None,
) -> dict[str, FetchedFile]:
    """{name: FetchedFile} for a UnixFS directory holding exactly the `expected` files (by default a PEFT
    adapter: adapter_config.json and adapter_model.safetensors). Names and declared sizes are checked
    before any file is fetched; each file's sha256 is computed while it streams in. With `into` (an
    existing folder) the files are written there block by block instead of held in memory; the caller
    decides what happens to them once the sha256 is known (the store renames them into its cache)."""
    root = _root(root_cid)
    async with _fetching(root, sources, max_bytes, options) as fetch:
        return await _fetch_dir(fetch, root, max_bytes, expected, into)


async def _fetch_dir(
    fetch: _Fetch, root: ParsedCid, max_bytes: int, expected: frozenset[str], into: Path | None
) -> dict[str, FetchedFile]:
    block = await fetch.block(root, MAX_BLOCK_SIZE)
    try:
        links = parse_directory_block(root, block)
    except UnixFSError as exc:
        raise DagFormatError(f"{exc}; an adapter CID must name a directory (ipfs add -r)") from exc
    names = [link.name for link in links]
    for name in names:
        check_entry_name(name, expected)
    if len(set(names)) != len(names) or set(names) != expected:
        raise DagFormatError(
            f"adapter directory {root} has entries {names}, expected exactly {sorted(expected)}"
        )
    declared = len(block) + sum(link.tsize for link in links)
    if declared > max_bytes:
        raise SizeLimitError(f"adapter {root} declares {declared} bytes, the cap is {max_bytes}")
    bodies = await fetch.gather(
        [
            fetch.file(link.cid, cap=link.tsize or MAX_BLOCK_SIZE, dest=into / link.name if into else None)
            for link in links
        ]
    )
    return dict(zip(names, bodies, strict=True))


async def fetch_adapter_dir(
    root_cid: str,
    sources: Sequence[BlockSource],
    *,
    max_bytes: int,
    expected: frozenset[str] = ADAPTER_FILES,
    options: FetchOptions | None = None,
) -> dict[str, bytes | bytearray]:
    """`fetch_adapter` without the digests: {name: bytes}."""
    files = await fetch_adapter(root_cid, sources, max_bytes=max_bytes, expected=expected, options=options)
    return {name: f.data for name, f in files.items()}
