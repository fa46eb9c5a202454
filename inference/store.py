"""The disk tier: verified adapters, content-addressed by CID, under a byte budget with LRU eviction.

    cache_dir/adapters/<CID multihash, base32>.<sha256 hex>/{adapter_config.json, adapter_model.safetensors}
    cache_dir/tmp/      downloads being written (emptied at start: a crash never leaves a partial entry)

An entry appears only by one atomic rename of a complete folder, after every IPFS block matched its CID and
sha256(adapter_model.safetensors) matched the registry's contentHash. Nothing unverified is ever written
under adapters/. The verified hash is part of the folder name, so the cache needs no separate index."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.ipfs.cid import InvalidCidError, block_key, parse_cid
from inference.ipfs.fetcher import ADAPTER_FILES, BlockSource, FetchError, FetchOptions, fetch_adapter

log = logging.getLogger(__name__)

WEIGHTS_FILE = "adapter_model.safetensors"


class AdapterIntegrityError(FetchError):
    """The adapter's bytes verified against its CID, but sha256(adapter_model.safetensors) is not the
    registry's contentHash: the registry entry pairs a CID with the wrong hash. Nothing was cached."""

    reason = "content-hash"

    def __init__(self, cid: str, expected: bytes, got: bytes) -> None:
        super().__init__(
            f"adapter {cid}: sha256(adapter_model.safetensors) is {got.hex()}, the registry says "
            f"{expected.hex()}; the registry entry is wrong (or names other bytes): adapter refused"
        )
        self.cid = cid
        self.expected = expected
        self.got = got


@dataclass
class CacheEntry:
    key: str  # base32 multihash of the CID
    content_hash: bytes
    path: Path
    size: int  # bytes of the two files
    last_used: float
    leases: int = 0
    verified: bool = True  # False for entries found on disk at start: re-hashed at their first lease


def _sha256_file(path: Path) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


def _commit_entry(tmp: Path, final: Path) -> None:
    """fsync the verified files in `tmp`, then rename the folder into place, durably."""
    for path in tmp.iterdir():
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
    os.chmod(tmp, 0o755)
    os.rename(tmp, final)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AdapterStore:
    def __init__(
        self,
        cache_dir: Path,
        *,
        budget_bytes: int,
        sources: Sequence[BlockSource],
        max_adapter_bytes: int,
        options: FetchOptions | None = None,
    ) -> None:
        if max_adapter_bytes <= 0 or budget_bytes <= 0:
            raise ValueError("budget_bytes and max_adapter_bytes must be positive")
        if max_adapter_bytes > budget_bytes:
            raise ValueError(
                f"max_adapter_bytes ({max_adapter_bytes}) is larger than the cache budget ({budget_bytes}): "
                f"an adapter that size could never be cached; raise the budget or lower the cap"
            )
        self.cache_dir = Path(cache_dir)
        self.budget_bytes = budget_bytes
        self.max_adapter_bytes = max_adapter_bytes
        self.sources = list(sources)
        self.options = options or FetchOptions()
        self.downloads = 0  # fetches started (a cache miss shared by concurrent callers counts once)
        self.rehashes = 0  # entries from before a restart whose bytes were hashed again
        self._adapters = self.cache_dir / "adapters"
        self._tmp = self.cache_dir / "tmp"
        self._entries: dict[str, CacheEntry] = {}
        self._inflight: dict[tuple[str, bytes], asyncio.Task[CacheEntry]] = {}
        self._waiting: dict[tuple[str, bytes], int] = {}  # callers awaiting each in-flight fill
        self._adapters.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self._tmp, ignore_errors=True)  # downloads interrupted by a crash
        self._tmp.mkdir(parents=True)
        self._load()

    def _load(self) -> None:
        for path in self._adapters.iterdir():
            key, _, digest = path.name.partition(".")
            files = {p.name: p for p in path.iterdir()} if path.is_dir() else {}
            try:
                content_hash = bytes.fromhex(digest)
                if set(files) != ADAPTER_FILES or len(content_hash) != 32 or key in self._entries:
                    raise ValueError(path.name)
            except ValueError:
                log.warning("adapter cache: removing unexpected entry %s", path)
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                continue
            size = sum(p.stat().st_size for p in files.values())
            self._entries[key] = CacheEntry(
                key, content_hash, path, size, path.stat().st_mtime, verified=False
            )

    # ------------------------------------------------------------------------------------------ queries

    def contains(self, cid: str) -> bool:
        try:
            return block_key(cid) in self._entries
        except InvalidCidError:
            return False

    def usage_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def entries(self) -> list[CacheEntry]:
        return sorted(self._entries.values(), key=lambda e: e.last_used)

    # ------------------------------------------------------------------------------------------ access

    async def get(
        self, cid: str, content_hash: bytes, *, sources: Sequence[BlockSource] | None = None
    ) -> Path:
        """A local folder holding the adapter's two files, fetched and verified first if not cached.
        get() itself never evicts the folder it returns, but a later eviction pass may: hold a lease()
        while reading it if other adapters can be fetched meanwhile. Raises FetchError
        (AdapterIntegrityError for a wrong content hash)."""
        entry = await self._acquire(cid, content_hash, sources)
        self._release(entry, keep=True)
        return entry.path

    @contextlib.asynccontextmanager
    async def lease(
        self, cid: str, content_hash: bytes, *, sources: Sequence[BlockSource] | None = None
    ) -> AsyncIterator[Path]:
        """Like get(), and the entry cannot be evicted until the block exits."""
        entry = await self._acquire(cid, content_hash, sources)
        try:
            yield entry.path
        finally:
            self._release(entry)

    def evict_to_budget(self, *, keep: str | None = None) -> list[str]:
        """Drop least-recently-used entries that nobody holds until usage fits the budget; return their keys.
        Leased entries (and `keep`) are never dropped, so usage can exceed the budget while they are held."""
        evicted: list[str] = []
        usage = self.usage_bytes()
        for entry in self.entries():
            if usage <= self.budget_bytes:
                break
            if entry.leases or entry.key == keep:
                continue
            del self._entries[entry.key]
            shutil.rmtree(entry.path, ignore_errors=True)
            usage -= entry.size
            evicted.append(entry.key)
            log.info("adapter cache: evicted %s (%d bytes)", entry.path.name, entry.size)
        return evicted

    async def close(self) -> None:
        """Close the sources' HTTP sessions (call once at shutdown)."""
        for source in self.sources:
            close = getattr(source, "close", None)
            if close is not None:
                await close()

    # ------------------------------------------------------------------------------------------ internals

    async def _acquire(
        self, cid: str, content_hash: bytes, sources: Sequence[BlockSource] | None
    ) -> CacheEntry:
        if len(content_hash) != 32:
            raise ValueError(f"content_hash must be 32 bytes of sha256, got {len(content_hash)}")
        try:
            parsed = parse_cid(cid)
        except InvalidCidError as exc:
            raise FetchError(str(exc), reason="bad-cid") from exc
        key = block_key(parsed)
        entry = self._entries.get(key)
        if entry is not None and not entry.verified:
            entry = await self._reverify(entry)
        if entry is not None:
            entry.leases += 1
        else:
            entry = await self._wait_for_fill(parsed.text, key, content_hash, sources)  # lease included
        if entry.content_hash != content_hash:
            # The CID fixes the bytes, so at most one hash can be right: the cached one was verified.
            self._release(entry)
            raise AdapterIntegrityError(parsed.text, content_hash, entry.content_hash)
        entry.last_used = time.time()
        with contextlib.suppress(OSError):
            os.utime(entry.path)  # keeps LRU order across restarts
        return entry

    async def _reverify(self, entry: CacheEntry) -> CacheEntry | None:
        """An entry from before a restart: its weights are hashed again (disk rot, a hand-edited cache)
        before anything reads them; a mismatch drops it, and it is fetched again."""
        entry.leases += 1  # not evictable while hashing
        try:
            got = await asyncio.to_thread(_sha256_file, entry.path / WEIGHTS_FILE)
        finally:
            entry.leases -= 1
        if got == entry.content_hash:
            entry.verified = True
            self.rehashes += 1
            return entry
        log.warning(
            "adapter cache: %s changed on disk (sha256 %s): dropped, fetching again", entry.path, got.hex()
        )
        if self._entries.get(entry.key) is entry and entry.leases == 0:
            del self._entries[entry.key]
            shutil.rmtree(entry.path, ignore_errors=True)
        return None

    async def _wait_for_fill(
        self, cid: str, key: str, content_hash: bytes, sources: Sequence[BlockSource] | None
    ) -> CacheEntry:
        """Single-flight: every caller waiting for the same (CID, hash) shares one download. The new entry
        is inserted already leased once per waiter, so no eviction can slip in between its insertion and
        the moment each waiter resumes."""
        flight = (key, content_hash)
        task = self._inflight.get(flight)
        if task is None:
            task = asyncio.ensure_future(self._fill(cid, key, content_hash, sources))
            self._inflight[flight] = task
            task.add_done_callback(lambda _: self._inflight.pop(flight, None))
        self._waiting[flight] = self._waiting.get(flight, 0) + 1
        try:
            # shield: one caller giving up must not cancel the download the others wait for
            return await asyncio.shield(task)
        except BaseException:
            if not task.done():
                self._waiting[flight] -= 1  # left before the entry existed: no lease was taken for us
            elif not task.cancelled() and task.exception() is None:
                self._release(task.result())  # the entry was inserted with our lease: give it back
            raise

    def _release(self, entry: CacheEntry, *, keep: bool = False) -> None:
        entry.leases -= 1
        self.evict_to_budget(keep=entry.key if keep else None)

    async def _fill(
        self, cid: str, key: str, content_hash: bytes, sources: Sequence[BlockSource] | None
    ) -> CacheEntry:
        flight = (key, content_hash)
        try:
            self.downloads += 1
            # Blocks are written into a private temp folder as they are verified against their CIDs; the
            # folder becomes a cache entry only once the weights' sha256 equals the registry's.
            tmp = Path(tempfile.mkdtemp(dir=self._tmp, prefix="fill-"))
            try:
                fetched = await fetch_adapter(
                    cid,
                    sources if sources is not None else self.sources,
                    max_bytes=self.max_adapter_bytes,
                    options=self.options,
                    into=tmp,
                )
                got = fetched[WEIGHTS_FILE].sha256  # hashed while the blocks streamed in, in file order
                if got != content_hash:
                    raise AdapterIntegrityError(cid, content_hash, got)
                final = self._adapters / f"{key}.{content_hash.hex()}"
                await asyncio.to_thread(_commit_entry, tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        except BaseException:
            self._waiting.pop(flight, None)
            raise
        size = sum(f.size for f in fetched.values())
        entry = CacheEntry(key, content_hash, final, size, time.time(), leases=self._waiting.pop(flight, 0))
        self._entries[key] = entry
        log.info("adapter cache: added %s (%d bytes)", cid, entry.size)
        return entry
