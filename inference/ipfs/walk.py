"""The state of one verified fetch: the DAG walk, the CAR streamed alongside it, raw leaves placed into
their files as they are verified, the byte budget and the concurrency limit (see docs/ipfs.md, "The
pipeline")."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .assembly import Assembly, FileSink, MemorySink, Sink
from .blockdata import Block, as_bytes
from .cid import RAW, ParsedCid
from .download import FetchOptions, from_sources, read_local_run, reads_locally, record_failure, source_stats
from .errors import DagFormatError, FetchError, SizeLimitError, SourceError
from .sources import MAX_BLOCK_SIZE, BlockSource, GatewaySource
from .unixfs import FileChild, FileNode, UnixFSError, parse_file_block

T = TypeVar("T")
MAX_DEPTH = 16  # 174^16 chunks: no honest file is deeper
WRITE_WINDOW = 4 << 20  # verified bytes that may wait for the file writer before reading pauses
LOCAL_RUN = 4  # leaves read and verified per worker-thread call from a local store


@dataclass(frozen=True)
class FetchedFile:
    data: bytes | bytearray | None  # in memory (a bytearray when assembled); None when written to `path`
    sha256: bytes
    size: int
    path: Path | None = None


@dataclass
class _Leaves:
    """The raw leaves of one file node that wait for the CAR stream: each placed the moment its verified
    block comes out of the stream (no task, no future per leaf); those the CAR did not bring are fetched
    block by block once it has ended."""

    waiting: int = 0
    unplaced: list[tuple[Assembly, FileChild, int]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    error: FetchError | None = None


class Fetch:
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
        self.blocks: dict[bytes, Block] = {}  # digest -> verified block not placed yet
        self._inflight: dict[bytes, asyncio.Future[Block]] = {}
        # While a CAR streams in, a block it will probably carry is awaited rather than requested again;
        # a raw leaf is registered with its place, and the stream puts it there.
        self._car_streaming = False
        self._car_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._leaf_places: dict[bytes, list[tuple[Assembly, FileChild, int, _Leaves]]] = {}
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
                        async for batch in source.get_car(root, max_bytes=self.max_bytes):
                            filled: set[Assembly] = set()
                            for cid, data in batch:
                                stats.bytes_received += len(data)
                                if (assembly := self._arrived(cid, data)) is not None:
                                    filled.add(assembly)
                            for assembly in filled:  # read on only as fast as the file is written
                                await assembly.drain(WRITE_WINDOW)
                    return
                except TimeoutError:
                    record_failure(
                        source,
                        SourceError(
                            f"{source.name}: CAR not complete within {self.options.car_timeout_s}s",
                            reason="timeout",
                        ),
                    )
                except FetchError as exc:
                    record_failure(source, exc)
        finally:
            self._car_streaming = False
            for waiter in self._car_waiters.values():  # what the CAR did not bring is fetched per block
                if not waiter.done():
                    waiter.set_result(None)
            self._car_waiters.clear()
            for places in self._leaf_places.values():
                for assembly, child, offset, leaves in places:
                    leaves.unplaced.append((assembly, child, offset))
                    leaves.done.set()
            self._leaf_places.clear()

    def _arrived(self, cid: ParsedCid, data: Block) -> Assembly | None:
        """A verified block from the CAR: a raw leaf goes straight to its place(s) if the walk knows them
        (and the file it went into is returned), anything else is kept for the walk (and wakes it if it
        waits for that block)."""
        places = self._leaf_places.pop(cid.digest, None)
        if places is not None:
            for assembly, child, offset, leaves in places:
                leaves.waiting -= 1
                try:
                    _put_leaf(assembly, child, offset, data)
                except FetchError as exc:  # the hash-verified DAG contradicts itself: not the source's fault
                    leaves.error = leaves.error or exc
                if leaves.waiting == 0 or leaves.error is not None:
                    leaves.done.set()
            return places[-1][0]
        if cid.digest not in self.blocks:
            self.blocks[cid.digest] = data
            waiter = self._car_waiters.pop(cid.digest, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return None

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

    async def block(self, cid: ParsedCid, cap: int) -> Block:
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

    async def _download(self, cid: ParsedCid, cap: int) -> Block:
        async with self._limit:
            data = await from_sources(self.sources, cid, cap, self.options)
        self.blocks[cid.digest] = data
        self._count(len(data))
        return data

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
        sink: Sink = FileSink(dest, node.filesize) if dest is not None else MemorySink(node.filesize)
        try:
            assembly = Assembly(node.filesize, sink)
            writer = asyncio.ensure_future(assembly.run())
            try:
                if cid.codec == RAW:
                    self.blocks.pop(cid.digest, None)
                    assembly.put(0, block)
                else:
                    await self._place(assembly, node, 0, depth=0)
                if assembly.filled != node.filesize:
                    raise DagFormatError(f"{cid}: the DAG has {assembly.filled} of {node.filesize} bytes")
                await writer
            finally:
                if not writer.done():
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
        finally:
            sink.close()
        return FetchedFile(sink.data(), assembly.sha256.digest(), node.filesize, dest)

    def _parse(self, cid: ParsedCid, block: Block) -> FileNode:
        if cid.codec == RAW:  # its bytes are the file's: nothing to parse (and no copy)
            return FileNode(data=b"", children=[], filesize=len(block))
        try:
            return parse_file_block(cid, as_bytes(block))
        except UnixFSError as exc:
            raise DagFormatError(str(exc)) from exc

    async def _place(self, assembly: Assembly, node: FileNode, offset: int, *, depth: int) -> None:
        """Write `node`'s bytes at `offset`, its children after them, fetched concurrently. Each child's
        offset follows from its siblings' sizes, which the parse checked add up to the parent's."""
        assembly.put(offset, node.data)
        offset += len(node.data)
        if node.children and depth + 1 > MAX_DEPTH:
            raise DagFormatError(f"file DAG deeper than {MAX_DEPTH} levels at {node.children[0].cid}")
        placements: list[Coroutine[Any, Any, None]] = []
        leaves = _Leaves()
        to_fetch: list[tuple[Assembly, FileChild, int]] = []
        for child in node.children:
            if child.cid.codec != RAW:
                placements.append(self._place_child(assembly, child, offset, depth=depth + 1))
            elif (block := self.blocks.pop(child.cid.digest, None)) is not None:
                _put_leaf(assembly, child, offset, block)
            elif self._car_streaming:
                self._leaf_places.setdefault(child.cid.digest, []).append((assembly, child, offset, leaves))
                leaves.waiting += 1
            else:
                to_fetch.append((assembly, child, offset))
            offset += child.filesize
        if leaves.waiting:
            placements.append(self._leaves_from_car(leaves))
        if to_fetch:
            placements.append(self._fetch_leaves(to_fetch))
        await self.gather(placements)

    async def _leaves_from_car(self, leaves: _Leaves) -> None:
        await leaves.done.wait()
        if leaves.error is not None:
            raise leaves.error
        await self._fetch_leaves(leaves.unplaced)

    async def _fetch_leaves(self, leaves: list[tuple[Assembly, FileChild, int]]) -> None:
        """Fetch raw leaves block by block, in file order, `concurrency` at a time; each waits until the
        file writer has room, so reads run only a window ahead of the writes. From a local store, a few
        consecutive leaves are read and verified per worker-thread call."""
        queue = iter(leaves)
        local = self.sources[0] if reads_locally(self.sources[0]) else None
        per_call = LOCAL_RUN if local is not None else 1

        async def worker() -> None:
            while run := list(itertools.islice(queue, per_call)):  # one iterator shared by the workers
                await run[0][0].drain(WRITE_WINDOW)
                got: list[Block | None] = [None] * len(run)
                if local is not None:
                    caps = [(child.cid, self._leaf_cap(child)) for _, child, _ in run]
                    got = list(await read_local_run(local, caps, self.options.timeout_s))
                for (assembly, child, offset), block in zip(run, got, strict=True):
                    if block is None:  # not read locally: from the sources in order, as any block
                        block = await self.block(child.cid, self._leaf_cap(child))
                        self.blocks.pop(child.cid.digest, None)  # placed: the sink holds it now
                    else:
                        self._count(len(block))
                    _put_leaf(assembly, child, offset, block)

        await self.gather([worker() for _ in range(min(self.options.concurrency, len(leaves)))])

    def _leaf_cap(self, child: FileChild) -> int:
        # A raw leaf's Tsize is its exact length: a longer response cannot be right, so it is cut off.
        cap = child.tsize if child.tsize > 0 else MAX_BLOCK_SIZE
        return max(1, min(cap, MAX_BLOCK_SIZE, self.max_bytes - self.received))

    def _count(self, size: int) -> None:
        self.received += size
        if self.received > self.max_bytes:
            raise SizeLimitError(
                f"the DAG exceeds the cap of {self.max_bytes} bytes; raise the cap only "
                f"if adapters this large are expected"
            )

    async def _place_child(self, assembly: Assembly, child: FileChild, offset: int, *, depth: int) -> None:
        # A node's Tsize bounds its block: a response beyond what the (hash-authenticated) parent says
        # cannot be right, so it is cut off there.
        cap = child.tsize if child.tsize > 0 else MAX_BLOCK_SIZE
        node = self._parse(child.cid, await self.block(child.cid, cap))
        if node.filesize != child.filesize:
            raise DagFormatError(
                f"{child.cid} holds {node.filesize} file bytes, its parent says {child.filesize}"
            )
        if not node.children:
            self.blocks.pop(child.cid.digest, None)  # placed: the sink holds it now
        await self._place(assembly, node, offset, depth=depth)


def _put_leaf(assembly: Assembly, child: FileChild, offset: int, block: Block) -> None:
    """A verified raw leaf into its place; its length must be what the parent's blocksizes say."""
    if len(block) != child.filesize:
        raise DagFormatError(f"{child.cid} holds {len(block)} file bytes, its parent says {child.filesize}")
    assembly.put(offset, block)
