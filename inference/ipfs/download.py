"""One block from the sources, in order: each answer bounded in size and checked against its CID before
it is returned; transient failures retried with jittered backoff, the rest counted and passed over."""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .blockdata import block_matches
from .cid import ParsedCid
from .errors import BlockIntegrityError, FetchError, SizeLimitError, SourceError, SourcesExhaustedError
from .sources import THREAD_HASH_MIN, BlockSource, SourceStats


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


def record_failure(source: BlockSource, exc: FetchError) -> None:
    stats = source_stats(source)
    stats.failures += 1
    stats.last_error = f"{exc.reason}: {exc}"


def _read_and_check(source: BlockSource, cid: ParsedCid, cap: int) -> tuple[bytes, bool]:
    """A local source's blocking read and the CID check, both in one worker-thread call."""
    data: bytes = source.read_block(cid.text, max_size=cap)  # type: ignore[attr-defined]
    if len(data) > cap:
        raise SizeLimitError(f"{source_name(source)}: {len(data)} bytes for {cid}, the limit is {cap}")
    return data, block_matches(cid, data)


def reads_locally(source: BlockSource) -> bool:
    """Whether the source offers a blocking read that is safe in a worker thread (a local store)."""
    return callable(getattr(source, "read_block", None))


def _read_run(source: BlockSource, run: list[tuple[ParsedCid, int]]) -> list[bytes | None]:
    out: list[bytes | None] = []
    for cid, cap in run:
        try:
            data, ok = _read_and_check(source, cid, cap)
        except Exception:  # fetched again the ordinary way, which records why
            data, ok = b"", False
        out.append(data if ok else None)
    return out


async def read_local_run(
    source: BlockSource, run: list[tuple[ParsedCid, int]], timeout_s: float
) -> list[bytes | None]:
    """Several blocks of a local source read and checked against their CIDs in one worker-thread call
    (fewer thread hops than one per block). None for a block that is missing, too big or wrong: the
    caller fetches it again through `from_sources`, which records the failure and asks the next source.
    Every bytes returned matched its CID."""
    try:
        async with asyncio.timeout(timeout_s):
            got = await asyncio.to_thread(_read_run, source, run)
    except TimeoutError:
        return [None] * len(run)
    stats = source_stats(source)
    for data in got:
        if data is not None:
            stats.requests += 1
            stats.bytes_received += len(data)
    return got


async def _attempt(source: BlockSource, cid: ParsedCid, cap: int, timeout_s: float) -> bytes:
    name = source_name(source)
    try:
        async with asyncio.timeout(timeout_s):
            if reads_locally(source):  # a blocking local read: read and check in one thread hop
                data, ok = await asyncio.to_thread(_read_and_check, source, cid, cap)
            else:
                if _takes_max_size(source):
                    data = await source.get_block(cid.text, max_size=cap)  # type: ignore[call-arg]
                else:
                    data = await source.get_block(cid.text)
                if len(data) > cap:
                    raise SizeLimitError(f"{name}: {len(data)} bytes for {cid}, the limit is {cap}")
                if len(data) < THREAD_HASH_MIN:
                    ok = block_matches(cid, data)
                else:  # hashlib releases the GIL: big blocks are hashed while the sockets are read
                    ok = await asyncio.to_thread(block_matches, cid, data)
    except TimeoutError as exc:
        raise SourceError(f"{name}: no answer within {timeout_s}s", reason="timeout") from exc
    except FetchError:
        raise
    except Exception as exc:  # a third-party source's own error type: still just that source failing
        reason = "not-found" if "unavailable" in type(exc).__name__.lower() else "source-error"
        raise SourceError(f"{name}: {type(exc).__name__}: {exc}", reason=reason, retryable=False) from exc
    if not ok:
        raise BlockIntegrityError(f"{name} returned {len(data)} bytes that do not hash to {cid}")
    return data


async def from_sources(
    sources: Sequence[BlockSource], cid: ParsedCid, cap: int, options: FetchOptions
) -> bytes:
    """The block from the first source that gives a valid copy; SourcesExhaustedError names each
    source's last error otherwise."""
    failures: dict[str, FetchError] = {}
    for source in sources:
        stats = source_stats(source)
        delay = options.backoff_s
        for attempt in range(1, options.attempts + 1):
            stats.requests += 1
            try:
                data = await _attempt(source, cid, cap, options.timeout_s)
            except FetchError as exc:
                record_failure(source, exc)
                failures[source_name(source)] = exc
                retry = isinstance(exc, SourceError) and exc.retryable and attempt < options.attempts
                if not retry:
                    break
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, options.max_backoff_s)
                continue
            stats.bytes_received += len(data)
            return data
    raise SourcesExhaustedError(cid.text, failures)
