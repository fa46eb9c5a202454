"""Verified fetching of UnixFS files and adapter directories, block by block, from sources in order.

Trust model: the root CID comes from the chain, so every block below it is authenticated by its hash the
moment it arrives. A source that returns a wrong, truncated or oversize block is counted as failed and
the next source is asked; the publisher is untrusted too, so the DAG's own claims (sizes, names, shape)
are checked against the caller's limits before the bytes they describe are downloaded."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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
    BlockSource,
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    SourceStats,
    block_matches,
)
from .unixfs import FileChild, UnixFSError, parse_directory_block, parse_file_block

__all__ = [
    "ADAPTER_FILES",
    "BlockIntegrityError",
    "BlockSource",
    "DagFormatError",
    "FetchError",
    "FetchOptions",
    "GatewaySource",
    "KuboRpcSource",
    "LocalStoreSource",
    "SizeLimitError",
    "SourceStats",
    "SourcesExhaustedError",
    "UnsafeNameError",
    "fetch_adapter_dir",
    "fetch_file",
]

T = TypeVar("T")
ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})
MAX_DEPTH = 16  # 174^16 chunks: no honest file is deeper


@dataclass(frozen=True)
class FetchOptions:
    timeout_s: float = 30.0  # per block request attempt
    car_timeout_s: float = 300.0  # for a whole-DAG CAR request
    attempts: int = 3  # per source, for transient errors (timeouts, 5xx)
    backoff_s: float = 0.2  # first retry delay; doubles, with jitter, up to max_backoff_s
    max_backoff_s: float = 2.0
    concurrency: int = 8  # blocks in flight at once


def _takes_max_size(source: BlockSource) -> bool:
    try:
        return "max_size" in inspect.signature(source.get_block).parameters
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

    async def prefetch_car(self, root: ParsedCid) -> None:
        """Ask CAR-capable gateways, in order, for the whole DAG in one response; stop at the first that
        delivers it all. Blocks that arrived before a failure were verified and are kept."""
        for source in self.sources:
            if not (isinstance(source, GatewaySource) and source.supports_car):
                continue
            stats = source_stats(source)
            stats.requests += 1
            try:
                async with asyncio.timeout(self.options.car_timeout_s):
                    async for cid, data in source.get_car(root, max_bytes=self.max_bytes):
                        if cid.digest not in self.blocks:
                            self.blocks[cid.digest] = data
                            stats.bytes_received += len(data)
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

    def _fail(self, source: BlockSource, exc: FetchError) -> None:
        stats = source_stats(source)
        stats.failures += 1
        stats.last_error = f"{exc.reason}: {exc}"

    async def block(self, cid: ParsedCid, cap: int) -> bytes:
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

    async def file(self, cid: ParsedCid, *, cap: int, filesize: int | None = None) -> bytes:
        return b"".join(await self._pieces(cid, cap=cap, filesize=filesize, depth=0))

    async def _pieces(self, cid: ParsedCid, *, cap: int, filesize: int | None, depth: int) -> list[bytes]:
        """The file as a flat list of leaf pieces, joined once at the top (one copy, not one per level)."""
        if depth > MAX_DEPTH:
            raise DagFormatError(f"file DAG deeper than {MAX_DEPTH} levels at {cid}")
        block = await self.block(cid, cap)
        try:
            node = parse_file_block(cid, block)
        except UnixFSError as exc:
            raise DagFormatError(str(exc)) from exc
        if filesize is not None and node.filesize != filesize:
            raise DagFormatError(f"{cid} holds {node.filesize} file bytes, its parent says {filesize}")
        if node.filesize > self.max_bytes:
            raise SizeLimitError(
                f"{cid} declares a file of {node.filesize} bytes, the cap is {self.max_bytes}"
            )
        if not node.children:
            return [node.data]
        parts = await self.gather([self._child(child, depth) for child in node.children])
        return [node.data, *(piece for part in parts for piece in part)]

    async def _child(self, child: FileChild, depth: int) -> list[bytes]:
        # A raw leaf's Tsize is its exact length, a node's Tsize bounds its block: a response beyond what
        # the (hash-authenticated) parent says cannot be right, so it is cut off there.
        cap = child.tsize if child.tsize > 0 else MAX_BLOCK_SIZE
        return await self._pieces(child.cid, cap=cap, filesize=child.filesize, depth=depth + 1)


def _root(cid: str) -> ParsedCid:
    try:
        return parse_cid(cid)
    except InvalidCidError as exc:
        raise FetchError(str(exc), reason="bad-cid") from exc


async def fetch_file(
    cid: str, sources: Sequence[BlockSource], *, max_bytes: int, options: FetchOptions | None = None
) -> bytes:
    """The bytes of the UnixFS file at `cid`, every block verified; at most max_bytes downloaded."""
    root = _root(cid)
    fetch = _Fetch(sources, max_bytes, options or FetchOptions())
    try:
        await fetch.prefetch_car(root)
        return await fetch.file(root, cap=MAX_BLOCK_SIZE)
    finally:
        await fetch.close()


async def fetch_adapter_dir(
    root_cid: str,
    sources: Sequence[BlockSource],
    *,
    max_bytes: int,
    expected: frozenset[str] = ADAPTER_FILES,
    options: FetchOptions | None = None,
) -> dict[str, bytes]:
    """{name: bytes} for a UnixFS directory holding exactly the `expected` files (by default a PEFT adapter:
    adapter_config.json and adapter_model.safetensors). Names and declared sizes are checked before any
    file is fetched."""
    root = _root(root_cid)
    fetch = _Fetch(sources, max_bytes, options or FetchOptions())
    try:
        await fetch.prefetch_car(root)
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
            [fetch.file(link.cid, cap=link.tsize or MAX_BLOCK_SIZE) for link in links]
        )
    finally:
        await fetch.close()
    return dict(zip(names, bodies, strict=True))
