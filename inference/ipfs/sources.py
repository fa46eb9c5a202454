"""Where blocks come from. A source only transports bytes; the fetcher verifies every block it returns.

HTTP responses are read in chunks and cut off as soon as they exceed the size the caller allows, so a
source that streams forever costs at most that many bytes."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

import aiohttp

from .blockstore import BlockStore
from .car import CarError, CarReader
from .cid import ParsedCid
from .errors import BlockIntegrityError, BlockUnavailableError, FetchError, SizeLimitError, SourceError

MAX_BLOCK_SIZE = 2 << 20  # bitswap's hard limit; Kubo's importer never makes blocks over 1 MiB
READ_BUFSIZE = 4 << 20  # aiohttp pauses the socket when its buffer passes this; 64 KiB (default) starves it
THREAD_HASH_MIN = 64 << 10
CAR_VERIFY_AHEAD = 8  # blocks being hashed in worker threads while the socket keeps being read


async def block_matches(cid: ParsedCid, data: bytes) -> bool:
    """Hash big blocks in a worker thread (hashlib releases the GIL), so verification overlaps with the
    sockets instead of stalling the event loop."""
    if len(data) < THREAD_HASH_MIN:
        return cid.matches(data)
    return await asyncio.to_thread(cid.matches, data)


@dataclass
class SourceStats:
    requests: int = 0
    failures: int = 0
    bytes_received: int = 0
    last_error: str | None = None


@runtime_checkable
class BlockSource(Protocol):
    """All the fetcher needs. Optional extras it uses when present: `name: str`, `stats: SourceStats`, and
    a `max_size: int` keyword on get_block so the source can stop reading an oversize answer early."""

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

    async def get_car(self, root: ParsedCid, *, max_bytes: int) -> AsyncIterator[tuple[ParsedCid, bytes]]:
        """Yield the DAG's blocks from one CAR response in order, each verified against its CID. Blocks are
        hashed in worker threads a few at a time while the socket keeps being read."""
        url = f"{self.base_url}/ipfs/{root.text}?format=car"
        reader = CarReader(max_block_size=MAX_BLOCK_SIZE, max_total=max_bytes, verify=False)
        pending: collections.deque[tuple[ParsedCid, bytes, asyncio.Future[bool]]] = collections.deque()

        async def first_verified() -> tuple[ParsedCid, bytes]:
            cid, data, check = pending.popleft()
            if not await check:
                raise BlockIntegrityError(f"{self.name} CAR {root}: block does not hash to {cid}")
            return cid, data

        try:
            async with self._http().get(url, headers={"Accept": "application/vnd.ipld.car"}) as resp:
                if resp.status != 200:
                    body = await resp.text(errors="replace")
                    raise _http_error(resp.status, f"{self.name} CAR {root}", body)
                async for chunk, _ in resp.content.iter_chunks():
                    for cid, data in reader.feed(chunk):
                        pending.append((cid, data, asyncio.ensure_future(block_matches(cid, data))))
                    while pending and (pending[0][2].done() or len(pending) > CAR_VERIFY_AHEAD):
                        yield await first_verified()
                reader.finish()
                while pending:
                    yield await first_verified()
                if reader.roots != [root]:
                    raise SourceError(
                        f"{self.name}: CAR for {root} has roots {reader.roots}", retryable=False
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
            for _, _, check in pending:
                check.cancel()


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

    async def get_block(self, cid: str, *, max_size: int = MAX_BLOCK_SIZE) -> bytes:
        data = self.store.get(cid, verify=False)  # the fetcher hashes every block anyway
        if data is None:
            raise BlockUnavailableError(f"{self.name}: no block {cid}")
        if len(data) > max_size:
            raise SizeLimitError(f"{self.name}: block {cid} is {len(data)} bytes, the limit is {max_size}")
        return data
