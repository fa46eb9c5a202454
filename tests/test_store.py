"""The adapter disk cache: verification before caching, single-flight, LRU under a budget, leases, crashes.
Blocks come over real HTTP from trustless gateways on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import DAG_PB, RAW, make_cid, parse_cid
from inference.ipfs.dagpb import PBLink, PBNode, encode_node
from inference.ipfs.fetcher import FetchError, FetchOptions, GatewaySource, SourcesExhaustedError
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.unixfs import DataType, ImportedDag, UnixFSData, import_directory, import_file
from inference.store import AdapterIntegrityError, AdapterStore
from tests.local_http import serve

FAST = FetchOptions(timeout_s=5, attempts=2, backoff_s=0.01)


def adapter(seed: int, size: int = 300_000) -> tuple[ImportedDag, bytes, dict[str, bytes]]:
    model = hashlib.shake_256(f"store-test-{seed}".encode()).digest(size)
    files = {"adapter_config.json": f'{{"r": {seed}}}'.encode(), "adapter_model.safetensors": model}
    return import_directory(files), hashlib.sha256(model).digest(), files


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TrustlessGateway]:
    gw = TrustlessGateway(BlockStore(tmp_path / "published"))
    await gw.start()
    yield gw
    await gw.stop()


def cache_state(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*"))


async def test_get_fetches_verifies_and_caches(tmp_path: Path, gateway: TrustlessGateway) -> None:
    dag, sha, files = adapter(1)
    gateway.store.put_dag(dag)
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=10 << 20, sources=[source], max_adapter_bytes=1 << 20
        )
        assert not store.contains(dag.root)
        path = await store.get(dag.root, sha)
        assert {p.name: p.read_bytes() for p in path.iterdir()} == files
        assert store.contains(dag.root) and store.usage_bytes() == sum(map(len, files.values()))
        requests = sum(gateway.requests.values())
        assert await store.get(dag.root, sha) == path
        assert sum(gateway.requests.values()) == requests and store.downloads == 1  # served from disk
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def test_wrong_content_hash_is_refused_and_nothing_is_cached(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    dag, sha, _ = adapter(2)
    gateway.store.put_dag(dag)
    wrong = hashlib.sha256(b"what the registry claims").digest()
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=10 << 20, sources=[source], max_adapter_bytes=1 << 20
        )
        before = cache_state(store.cache_dir)
        with pytest.raises(AdapterIntegrityError) as err:
            await store.get(dag.root, wrong)
        assert err.value.reason == "content-hash"
        assert wrong.hex() in str(err.value) and sha.hex() in str(err.value)  # names expected and got
        assert cache_state(store.cache_dir) == before and not store.contains(dag.root)
        # once cached under its true hash, a wrong hash for the same CID is refused without a download
        await store.get(dag.root, sha)
        with pytest.raises(AdapterIntegrityError):
            await store.get(dag.root, wrong)
        assert store.downloads == 2


# ---- the hostile corpus, end to end through the cache


class Hostile:
    """A real HTTP gateway over an honest store that misbehaves on one block in a chosen way."""

    def __init__(self, store: BlockStore, victim: str, how: str) -> None:
        self.store, self.victim, self.how = store, victim, how
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        data = self.store.get(cid) or b""
        if cid != self.victim:
            return web.Response(body=data)
        if self.how == "tampered":
            return web.Response(body=data[:-1] + bytes([data[-1] ^ 1]))
        if self.how == "another-block":
            return web.Response(body=import_file(b"another block").blocks[import_file(b"another block").root])
        response = web.StreamResponse()
        if self.how == "truncated":
            response.content_length = len(data)
        await response.prepare(request)
        if self.how == "truncated":
            await response.write(data[: len(data) // 3])
            assert request.transport is not None
            request.transport.close()
            return response
        for _ in range(256):  # oversize: streams until the client hangs up (256 MiB at most)
            try:
                await response.write(b"\xff" * (1 << 20))
            except ConnectionError:
                break
        return response

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._handle)
        self._runner, url = await serve(app)
        return url

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("tampered", "block-integrity"),
        ("another-block", "block-integrity"),
        ("truncated", "truncated"),
        ("oversize", "size-limit"),
    ],
)
async def test_hostile_gateways_are_refused_and_the_cache_is_unchanged(
    tmp_path: Path, how: str, reason: str
) -> None:
    dag, sha, _ = adapter(3)
    blocks = BlockStore(tmp_path / "published")
    blocks.put_dag(dag)
    victim = [c for c in dag.blocks if parse_cid(c).codec == RAW][1]
    hostile = Hostile(blocks, victim, how)
    url = await hostile.start()
    try:
        async with GatewaySource(url) as source:
            store = AdapterStore(
                tmp_path / "cache",
                budget_bytes=10 << 20,
                sources=[source],
                max_adapter_bytes=1 << 20,
                options=FAST,
            )
            before = cache_state(store.cache_dir)
            with pytest.raises(SourcesExhaustedError) as err:
                await store.get(dag.root, sha)
    finally:
        await hostile.stop()
    assert err.value.cid == victim
    assert [e.reason for e in err.value.failures.values()] == [reason]
    assert cache_state(store.cache_dir) == before and store.usage_bytes() == 0


async def test_path_traversal_name_is_refused_and_the_cache_is_unchanged(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    config, model = import_file(b"{}"), import_file(b"\0" * 1000)
    links = [
        PBLink(parse_cid(config.root), "adapter_config.json", config.size),
        PBLink(parse_cid(model.root), "../adapter_model.safetensors", model.size),
    ]
    block = encode_node(PBNode(links, UnixFSData(DataType.DIRECTORY).encode()))
    root_cid = make_cid(block, codec=DAG_PB, version=1).text
    gateway.store.put_dag(ImportedDag(root_cid, {root_cid: block, **config.blocks, **model.blocks}, 0))
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=1 << 20, sources=[source], max_adapter_bytes=1 << 20
        )
        before = cache_state(store.cache_dir)
        with pytest.raises(FetchError) as err:
            await store.get(root_cid, hashlib.sha256(b"\0" * 1000).digest())
    assert err.value.reason == "unsafe-name"
    assert cache_state(store.cache_dir) == before
    assert not (tmp_path / "adapter_model.safetensors").exists()


# ---- concurrency and the budget


async def test_fifty_parallel_gets_make_one_download(tmp_path: Path, gateway: TrustlessGateway) -> None:
    dag, sha, files = adapter(4, size=2 << 20)  # 8 chunks
    gateway.store.put_dag(dag)
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=10 << 20, sources=[source], max_adapter_bytes=4 << 20
        )
        paths = await asyncio.gather(*(store.get(dag.root, sha) for _ in range(50)))
    assert len(set(paths)) == 1 and store.downloads == 1
    assert set(gateway.requests) == {f"raw:{cid}" for cid in dag.blocks}
    assert all(count == 1 for count in gateway.requests.values())  # every block fetched exactly once
    assert (paths[0] / "adapter_model.safetensors").read_bytes() == files["adapter_model.safetensors"]


async def test_cancelled_waiter_does_not_cancel_the_shared_download(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    dag, sha, _ = adapter(5)
    gateway.store.put_dag(dag)
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=10 << 20, sources=[source], max_adapter_bytes=1 << 20
        )
        impatient = asyncio.ensure_future(store.get(dag.root, sha))
        patient = asyncio.ensure_future(store.get(dag.root, sha))
        await asyncio.sleep(0)
        impatient.cancel()
        assert (await patient).is_dir() and store.downloads == 1


async def test_budget_holds_under_churn_and_leased_entries_stay(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    adapters = [adapter(10 + i, size=100_000) for i in range(8)]
    for dag, _, _ in adapters:
        gateway.store.put_dag(dag)
    entry_size = 100_000 + len('{"r": 10}')
    budget = 3 * entry_size + 10
    rng = random.Random(7)
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=budget, sources=[source], max_adapter_bytes=budget
        )
        pinned_dag, pinned_sha, _ = adapters[0]
        async with store.lease(pinned_dag.root, pinned_sha) as pinned:
            for _ in range(6):  # concurrent rounds of gets and short leases over the other adapters
                picks = [adapters[rng.randrange(1, 8)] for _ in range(5)]

                async def use(dag: ImportedDag, sha: bytes) -> None:
                    async with store.lease(dag.root, sha) as path:
                        assert (path / "adapter_model.safetensors").is_file()  # never evicted while held
                        await asyncio.sleep(rng.random() / 100)

                await asyncio.gather(*(use(dag, sha) for dag, sha, _ in picks))
                assert store.usage_bytes() <= budget  # holds after every round with only the pin held
                assert pinned.is_dir() and store.contains(pinned_dag.root)
        assert store.usage_bytes() <= budget
        on_disk = sorted(p.name for p in (store.cache_dir / "adapters").iterdir())
        assert on_disk == sorted(e.path.name for e in store.entries())  # evicted folders really are gone
        assert store.downloads > 8  # there was churn: adapters were evicted and fetched again


async def test_new_entry_survives_eviction_pressure_until_its_waiters_hold_it(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    (a, sha_a, _), (b, sha_b, _) = adapter(20, size=100_000), adapter(21, size=100_000)
    gateway.store.put_dag(a)
    gateway.store.put_dag(b)
    budget = 150_000  # A and B do not fit together, and A stays leased
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=budget, sources=[source], max_adapter_bytes=budget
        )
        async with store.lease(a.root, sha_a):
            done = asyncio.Event()

            async def use_b() -> bool:
                async with store.lease(b.root, sha_b) as path:
                    return (path / "adapter_model.safetensors").is_file()

            async def churn_a() -> None:  # eviction passes all the time, also between B's insertion and use
                while not done.is_set():
                    await store.get(a.root, sha_a)
                    await asyncio.sleep(0)

            churner = asyncio.ensure_future(churn_a())
            results = await asyncio.gather(*(use_b() for _ in range(5)))
            done.set()
            await churner
            assert results == [True] * 5 and store.downloads == 2
            path_b = await store.get(b.root, sha_b)  # over budget with A leased: get() must not evict B
            assert (path_b / "adapter_model.safetensors").is_file()
        assert store.usage_bytes() <= budget  # releasing A's lease ran an eviction pass


# ---- crashes and restarts


async def test_restart_cleans_partial_writes_and_keeps_complete_entries(
    tmp_path: Path, gateway: TrustlessGateway
) -> None:
    dag, sha, _ = adapter(6)
    gateway.store.put_dag(dag)
    cache = tmp_path / "cache"
    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(cache, budget_bytes=10 << 20, sources=[source], max_adapter_bytes=1 << 20)
        path = await store.get(dag.root, sha)
    # a crash mid-fill leaves a temp folder; a foreign or half-made folder in adapters/ is not an entry
    (cache / "tmp" / "fill-crashed").mkdir()
    (cache / "tmp" / "fill-crashed" / "adapter_model.safetensors").write_bytes(b"half")
    half = cache / "adapters" / f"{path.name.split('.')[0][:-4]}aaaa.{'00' * 32}"
    half.mkdir()
    (half / "adapter_config.json").write_bytes(b"{}")
    restarted = AdapterStore(cache, budget_bytes=10 << 20, sources=[], max_adapter_bytes=1 << 20)
    assert list((cache / "tmp").iterdir()) == [] and not half.exists()
    assert restarted.contains(dag.root)
    assert await restarted.get(dag.root, sha) == path  # no sources needed: served from disk
    assert restarted.downloads == 0


async def test_crash_during_the_final_rename_leaves_no_entry(
    tmp_path: Path, gateway: TrustlessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    dag, sha, _ = adapter(7)
    gateway.store.put_dag(dag)

    def power_cut(src: object, dst: object) -> None:
        raise OSError("simulated crash at rename")

    async with GatewaySource(gateway.url) as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=10 << 20, sources=[source], max_adapter_bytes=1 << 20
        )
        monkeypatch.setattr(os, "rename", power_cut)
        with pytest.raises(OSError, match="simulated crash"):
            await store.get(dag.root, sha)
        monkeypatch.undo()
    assert not store.contains(dag.root)
    assert list((tmp_path / "cache" / "adapters").iterdir()) == []
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_configuration_errors_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="could never be cached"):
        AdapterStore(tmp_path, budget_bytes=1 << 20, sources=[], max_adapter_bytes=2 << 20)


async def test_no_sources_is_a_fetch_error(tmp_path: Path) -> None:
    dag, sha, _ = adapter(8)
    store = AdapterStore(tmp_path, budget_bytes=1 << 20, sources=[], max_adapter_bytes=1 << 20)
    with pytest.raises(FetchError) as err:
        await store.get(dag.root, sha)
    assert err.value.reason == "no-sources"
