"""Where blocks come from. A source only transports bytes; the fetcher verifies every block it returns.

HTTP responses are read in chunks and cut off as soon as they exceed the size the caller allows, so a
source that streams forever costs at most that many bytes."""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import aiohttp

from .blockdata import Block, Pieces, block_matches
from .blockstore import BlockStore
from .car import CarError, CarFramer
from .cid import DAG_PB, ParsedCid
from .errors import BlockIntegrityError, BlockUnavailableError, FetchError, SizeLimitError, SourceError

MAX_BLOCK_SIZE = 2 << 20  # bitswap's hard limit; Kubo's importer never makes blocks over 1 MiB
READ_BUFSIZE = 4 << 20  # aiohttp pauses the socket when its buffer passes this; 64 KiB (default) starves it
THREAD_HASH_MIN = 64 << 10  # smaller blocks are hashed on the loop: a thread hop costs more
CAR_VERIFY_BATCH = 1 << 20  # CAR blocks are hashed in worker threads this many bytes per job
CAR_VERIFY_AHEAD = 2  # jobs in flight while the socket keeps being read


@dataclass
class SourceStats:
    requests: int = 0
    failures: int = 0
    bytes_received: int = 0
    last_error: str | None = None


@runtime_checkable
class BlockSource(Protocol):
    """All the fetcher needs. Optional extras it uses when present: `name: str`, `stats: SourceStats`, a
    `max_size: int` keyword on get_block so the source can stop reading an oversize answer early, and a
    blocking `read_block(cid, *, max_size)` safe to call from a worker thread (a local store: the fetcher
    then reads and verifies each block in one thread hop instead of reading on the event loop)."""

    async def get_block(self, cid: str) -> bytes:
        """The block's bytes, unverified; raise on failure (a FetchError subclass says why best)."""
        ...


async def _read_capped(response: aiohttp.ClientResponse, max_size: int, what: str) -> bytes:
    declared = response.content_length
    if declared is not None and declared > max_size:
        raise SizeLimitError(f"{what}: response declares {declared} bytes, the limit is {max_size}")
    buf = bytearray()
    try:
        async for chunk, _ in response.content.iter_chunks():  # no re-joining of socket reads
            buf += chunk
            if len(buf) > max_size:
                raise SizeLimitError(f"{what}: response exceeded {max_size} bytes; stream cut off")
    except aiohttp.ClientPayloadError as exc:
        raise SourceError(f"{what}: truncated response ({exc})", reason="truncated") from exc
    return bytes(buf)


def _http_error(status: int, what: str, body: str = "") -> FetchError:
    if status == 404:
        return BlockUnavailableError(f"{what}: not found (HTTP 404)")
    retryable = status == 429 or status >= 500
    return SourceError(f"{what}: HTTP {status} {body[:200]}".rstrip(), retryable=retryable)


class _HttpSource:
    def __init__(self, base_url: str, name: str | None, session: aiohttp.ClientSession | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or self.base_url
        self.stats = SourceStats()
        self._session = session
        self._owns_session = session is None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout here: the fetcher bounds each attempt; this only catches dead sockets.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
            self._session = aiohttp.ClientSession(
                timeout=timeout, auto_decompress=False, read_bufsize=READ_BUFSIZE
            )
            self._owns_session = True
        return self._session

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class GatewaySource(_HttpSource):
    """An IPFS trustless gateway (GET /ipfs/{cid}). mode="car" makes the fetcher first ask for the whole DAG
    as one CAR stream (one request instead of one per block), falling back to raw blocks for anything the
    CAR did not deliver."""

    def __init__(
        self,
        base_url: str,
        *,
        mode: str = "raw",
        name: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if mode not in ("raw", "car"):
            raise ValueError(f"GatewaySource mode must be 'raw' or 'car', got {mode!r}")
        super().__init__(base_url, name or f"gateway {base_url.rstrip('/')}", session)
        self.mode = mode

    @property
    def supports_car(self) -> bool:
        return self.mode == "car"

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        url = f"{self.base_url}/ipfs/{cid}?format=raw"
        try:
            async with self._http().get(url, headers={"Accept": "application/vnd.ipld.raw"}) as resp:
                if resp.status != 200:
                    raise _http_error(resp.status, f"{self.name} {cid}", await resp.text(errors="replace"))
                return await _read_capped(resp, max_size, f"{self.name} {cid}")
        except aiohttp.ClientError as exc:
            raise SourceError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def get_car(
        self, root: ParsedCid, *, max_bytes: int
    ) -> AsyncIterator[list[tuple[ParsedCid, Block]]]:
        """Yield the DAG's blocks from one CAR response in stream order, a batch at a time, each block
        verified against its CID. The body is read in the chunks the socket gives; blocks are cut out of
        them without copying (a raw leaf comes as Pieces: views of the chunks) and hashed in worker
        threads about a MiB at a time, while the socket keeps being read; a batch is yielded only once
        all of it matched. dag-pb nodes (small, to be parsed) come as bytes, and go to be hashed at once."""
        url = f"{self.base_url}/ipfs/{root.text}?format=car"
        framer = CarFramer(max_block_size=MAX_BLOCK_SIZE, max_total=max_bytes)
        pending: collections.deque[tuple[list[tuple[ParsedCid, Pieces]], asyncio.Future[int]]]
        pending = collections.deque()
        loop = asyncio.get_running_loop()

        async def first_verified() -> list[tuple[ParsedCid, Block]]:
            batch, check = pending.popleft()
            bad = await check
            if bad >= 0:
                raise BlockIntegrityError(f"{self.name} CAR {root}: block does not hash to {batch[bad][0]}")
            return [(cid, data.tobytes() if cid.codec == DAG_PB else data) for cid, data in batch]

        try:
            async with self._http().get(url, headers={"Accept": "application/vnd.ipld.car"}) as resp:
                if resp.status != 200:
                    body = await resp.text(errors="replace")
                    raise _http_error(resp.status, f"{self.name} CAR {root}", body)
                batch: list[tuple[ParsedCid, Pieces]] = []
                size = 0
                async for chunk, _ in resp.content.iter_chunks():
                    for cid, data in framer.feed(chunk if isinstance(chunk, bytes) else bytes(chunk)):
                        batch.append((cid, data))
                        size += len(data)
                        # dag-pb nodes go at once (the walk waits for them), leaves a few MiB at a time
                        if cid.codec == DAG_PB or size >= CAR_VERIFY_BATCH:
                            pending.append((batch, _verify(loop, batch, size)))
                            batch, size = [], 0
                    while pending and (pending[0][1].done() or len(pending) > CAR_VERIFY_AHEAD):
                        yield await first_verified()
                framer.finish()
                if batch:
                    pending.append((batch, _verify(loop, batch, size)))
                while pending:
                    yield await first_verified()
                if framer.roots != [root]:
                    raise SourceError(
                        f"{self.name}: CAR for {root} has roots {framer.roots}", retryable=False
                    )
        except CarError as exc:
            if exc.reason == "too-large":
                raise SizeLimitError(f"{self.name} CAR {root}: {exc}") from exc
            raise SourceError(f"{self.name} CAR {root}: {exc}", reason=exc.reason, retryable=False) from exc
        except aiohttp.ClientPayloadError as exc:
            raise SourceError(
                f"{self.name} CAR {root}: truncated response ({exc})", reason="truncated"
            ) from exc
        except aiohttp.ClientError as exc:
            raise SourceError(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        finally:
            for _, check in pending:
                check.cancel()


def _verify(
    loop: asyncio.AbstractEventLoop, batch: list[tuple[ParsedCid, Pieces]], size: int
) -> asyncio.Future[int]:
    if size >= THREAD_HASH_MIN:
        return loop.run_in_executor(None, _first_bad, batch)
    done = loop.create_future()
    done.set_result(_first_bad(batch))
    return done


def _first_bad(batch: Sequence[tuple[ParsedCid, Pieces]]) -> int:
    """Index of the first block that does not hash to its CID, or -1 (run in a worker thread)."""
    for i, (cid, data) in enumerate(batch):
        if not block_matches(cid, data):
            return i
    return -1


class KuboRpcSource(_HttpSource):
    """A Kubo node's RPC API (POST /api/v0/block/get?arg=CID), e.g. the node operator's own daemon on
    127.0.0.1:5001. Never expose that API beyond localhost: it is an admin interface."""

    def __init__(
        self, api_url: str, *, name: str | None = None, session: aiohttp.ClientSession | None = None
    ) -> None:
        super().__init__(api_url, name or f"kubo {api_url.rstrip('/')}", session)

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        url = f"{self.base_url}/api/v0/block/get"
        try:
            async with self._http().post(url, params={"arg": cid}) as resp:
                if resp.status != 200:
                    body = await resp.text(errors="replace")
                    if "not found" in body.lower():
                        raise BlockUnavailableError(f"{self.name} {cid}: {body.strip()[:200]}")
                    raise _http_error(resp.status, f"{self.name} {cid}", body)
                return await _read_capped(resp, max_size, f"{self.name} {cid}")
        except aiohttp.ClientError as exc:
            raise SourceError(f"{self.name}: {type(exc).__name__}: {exc}") from exc


class LocalStoreSource:
    """Blocks already in a local BlockStore (e.g. one this node publishes from)."""

    def __init__(self, store: BlockStore, *, name: str | None = None) -> None:
        self.store = store
        self.name = name or f"local {store.root}"
        self.stats = SourceStats()

    def read_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        """Blocking read, safe in a worker thread: the fetcher reads and verifies in one thread hop."""
        path = self.store.path_for(cid)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > max_size:
                    raise SizeLimitError(f"{self.name}: block {cid} is {size} bytes, the limit is {max_size}")
                data = f.read(size + 1)  # the fetcher hashes every block anyway
        except FileNotFoundError as exc:
            raise BlockUnavailableError(f"{self.name}: no block {cid}") from exc
        if len(data) > max_size:
            raise SizeLimitError(f"{self.name}: block {cid} grew past the limit of {max_size} bytes")
        return data

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        return self.read_block(cid, max_size=max_size)
