"""The verified fetcher against honest and hostile gateways, all real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import make_cid, parse_cid
from inference.ipfs.dagpb import PBLink, PBNode, encode_node
from inference.ipfs.fetcher import (
    BlockIntegrityError,
    DagFormatError,
    FetchError,
    FetchOptions,
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    SizeLimitError,
    SourcesExhaustedError,
    UnsafeNameError,
    fetch_adapter,
    fetch_adapter_dir,
    fetch_file,
)
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.unixfs import DataType, ImportedDag, UnixFSData, import_directory, import_file
from tests.local_http import honest_gateway, raw_leaves, serve

MODEL = hashlib.shake_256(b"fetcher-test-model").digest(3 * 262_144 + 1000)  # 4 chunks
FILES = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": MODEL}
FAST = FetchOptions(timeout_s=5, attempts=3, backoff_s=0.01)


@pytest.fixture
def dag() -> ImportedDag:
    return import_directory(FILES)


@pytest.fixture
async def honest(tmp_path: Path, dag: ImportedDag) -> AsyncIterator[TrustlessGateway]:
    async with honest_gateway(tmp_path / "honest", dag) as gateway:
        yield gateway


Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class HostileGateway:
    """A real HTTP server answering GET /ipfs/{cid} however the test says (an adversary, a flaky host)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        return await self.handler(request, request.match_info["cid"])

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._handle)
        self._runner, url = await serve(app)
        return url

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


# ---- honest paths


@pytest.mark.parametrize("kind", ["raw", "car", "kubo", "local"])
async def test_fetch_adapter_dir_from_each_source_kind(
    kind: str, honest: TrustlessGateway, dag: ImportedDag
) -> None:
    source = {
        "raw": lambda: GatewaySource(honest.url),
        "car": lambda: GatewaySource(honest.url, mode="car"),
        "kubo": lambda: KuboRpcSource(honest.url),
        "local": lambda: LocalStoreSource(honest.store),
    }[kind]()
    files = await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size)
    assert files == FILES
    assert source.stats.failures == 0
    if kind == "car":
        assert sum(honest.requests.values()) == 1  # the whole DAG in one request
    elif kind in ("raw", "kubo"):
        assert sum(honest.requests.values()) == len(dag.blocks)
    if hasattr(source, "close"):
        await source.close()


async def test_fetch_file_v0_dag(tmp_path: Path) -> None:
    dag = import_file(MODEL, cid_version=0)
    store = BlockStore(tmp_path)
    store.put_dag(dag)
    assert await fetch_file(dag.root, [LocalStoreSource(store)], max_bytes=dag.size) == MODEL


async def test_missing_blocks_fall_through_to_the_next_source(
    tmp_path: Path, honest: TrustlessGateway, dag: ImportedDag
) -> None:
    empty = TrustlessGateway(BlockStore(tmp_path / "empty"))
    await empty.start()
    try:
        async with GatewaySource(empty.url) as first, GatewaySource(honest.url) as second:
            assert await fetch_adapter_dir(dag.root, [first, second], max_bytes=dag.size) == FILES
            assert first.stats.failures == len(dag.blocks)  # a 404 is not retried
            assert first.stats.last_error is not None and first.stats.last_error.startswith("not-found")
            assert second.stats.failures == 0
    finally:
        await empty.stop()


# ---- the hostile corpus


async def test_tampered_block_behind_a_gateway_is_refused(
    tmp_path: Path, honest: TrustlessGateway, dag: ImportedDag
) -> None:
    bad_store = BlockStore(tmp_path / "tampered")
    bad_store.put_dag(dag)
    victim = raw_leaves(dag)[1]
    path = bad_store.path_for(victim)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0x01
    path.write_bytes(bytes(data))
    liar = TrustlessGateway(bad_store)  # serves what is on disk, like Kubo without HashOnRead
    await liar.start()
    try:
        async with GatewaySource(liar.url) as only:
            with pytest.raises(SourcesExhaustedError) as err:
                await fetch_adapter_dir(dag.root, [only], max_bytes=dag.size)
        assert err.value.cid == victim
        assert [e.reason for e in err.value.failures.values()] == ["block-integrity"]
        assert "do not hash to" in str(err.value)
        # the same liar first, an honest gateway second: the bad block is replaced, the liar is counted
        async with GatewaySource(liar.url) as first, GatewaySource(honest.url) as second:
            assert await fetch_adapter_dir(dag.root, [first, second], max_bytes=dag.size) == FILES
            assert first.stats.failures == 1 and second.stats.requests == 1
    finally:
        await liar.stop()


async def test_gateway_returning_another_block_is_refused(dag: ImportedDag) -> None:
    other = import_file(b"a perfectly valid block, just not the one asked for")

    async def wrong(request: web.Request, cid: str) -> web.Response:
        return web.Response(body=other.blocks[other.root], content_type="application/vnd.ipld.raw")

    async with HostileGateway(wrong) as url, GatewaySource(url) as source:
        with pytest.raises(SourcesExhaustedError) as err:
            await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size)
    assert isinstance(err.value.failures[source.name], BlockIntegrityError)
    assert source.stats.requests == 1  # an integrity failure is not retried on the same source


async def test_truncated_stream_is_refused(honest: TrustlessGateway, dag: ImportedDag) -> None:
    async def truncate(request: web.Request, cid: str) -> web.StreamResponse:
        data = honest.store.get(cid) or b""
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.raw"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 2])
        assert request.transport is not None
        request.transport.close()  # the connection dies halfway
        return response

    async with HostileGateway(truncate) as url, GatewaySource(url) as source:
        with pytest.raises(SourcesExhaustedError) as err:
            await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size, options=FAST)
    assert err.value.failures[source.name].reason == "truncated"


async def test_oversize_stream_is_cut_off(dag: ImportedDag) -> None:
    sent = 0

    async def endless(request: web.Request, cid: str) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.raw"})
        await response.prepare(request)
        try:
            for _ in range(1024):  # up to 1 GiB, unless the client hangs up
                await response.write(b"\0" * (1 << 20))
                sent += 1 << 20
        except (ConnectionResetError, ConnectionError):
            pass
        return response

    async with HostileGateway(endless) as url, GatewaySource(url) as source:
        with pytest.raises(SourcesExhaustedError) as err:
            await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size)
        await asyncio.sleep(0.2)
    assert isinstance(err.value.failures[source.name], SizeLimitError)
    assert sent < 64 << 20  # hung up long before the gigabyte (socket buffers hold a few MiB)


def _directory(entries: dict[str, ImportedDag]) -> ImportedDag:
    """A directory built by hand, so it can hold names the importer would refuse."""
    blocks: dict[str, bytes] = {}
    links = []
    for name, sub in entries.items():
        blocks.update(sub.blocks)
        links.append(PBLink(parse_cid(sub.root), name, sub.size))
    block = encode_node(PBNode(links, UnixFSData(DataType.DIRECTORY).encode()))
    root = make_cid(block, codec=0x70, version=1)
    blocks[root.text] = block
    return ImportedDag(root.text, blocks, len(block) + sum(link.tsize for link in links))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../adapter_model.safetensors", "unsafe-name"),
        ("..", "unsafe-name"),
        ("sub/adapter_model.safetensors", "unsafe-name"),
        ("adapter_model.safetensors\x00.txt", "unsafe-name"),
        ("", "unsafe-name"),
        ("adapter_model.bin", "unexpected-entry"),
    ],
)
async def test_unsafe_directory_names_are_refused_before_any_file_is_fetched(
    tmp_path: Path, name: str, reason: str
) -> None:
    hostile = _directory({"adapter_config.json": import_file(b"{}"), name: import_file(MODEL)})
    store = BlockStore(tmp_path)
    store.put_dag(hostile)
    gateway = TrustlessGateway(store)
    await gateway.start()
    try:
        async with GatewaySource(gateway.url) as source:
            with pytest.raises(UnsafeNameError) as err:
                await fetch_adapter_dir(hostile.root, [source], max_bytes=hostile.size)
    finally:
        await gateway.stop()
    assert err.value.reason == reason
    assert sum(gateway.requests.values()) == 1  # only the directory block itself


async def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    single_file = import_file(MODEL)
    missing = _directory({"adapter_config.json": import_file(b"{}")})
    nested = _directory({"adapter_config.json": import_file(b"{}"), "adapter_model.safetensors": missing})
    for dag in (single_file, missing, nested):
        store.put_dag(dag)
    source = LocalStoreSource(store)
    with pytest.raises(DagFormatError, match="must name a directory"):
        await fetch_adapter_dir(single_file.root, [source], max_bytes=1 << 30)
    with pytest.raises(DagFormatError, match="expected exactly"):
        await fetch_adapter_dir(missing.root, [source], max_bytes=1 << 30)
    with pytest.raises(DagFormatError, match="expected a UnixFS file"):
        await fetch_adapter_dir(nested.root, [source], max_bytes=1 << 30)
    with pytest.raises(FetchError) as err:
        await fetch_adapter_dir("not-a-cid", [source], max_bytes=1 << 30)
    assert err.value.reason == "bad-cid"


async def test_dag_over_the_cap_is_refused_before_downloading_it(
    honest: TrustlessGateway, dag: ImportedDag
) -> None:
    async with GatewaySource(honest.url) as source:
        with pytest.raises(SizeLimitError, match="declares"):
            await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size - 1)
    assert sum(honest.requests.values()) == 1
    # fetch_file: the root's declared filesize is checked before its leaves are asked for
    file_dag = import_file(MODEL)
    honest.store.put_dag(file_dag)
    async with GatewaySource(honest.url) as source:
        with pytest.raises(SizeLimitError):
            await fetch_file(file_dag.root, [source], max_bytes=len(MODEL) - 1)
    assert honest.requests[f"raw:{raw_leaves(file_dag)[0]}"] == 0


async def test_transient_errors_are_retried_with_backoff(honest: TrustlessGateway) -> None:
    dag = import_file(b"small file")
    honest.store.put_dag(dag)
    calls = 0

    async def flaky(request: web.Request, cid: str) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= 2:
            return web.Response(status=503, text="try later")
        return web.Response(body=honest.store.get(cid))

    async with HostileGateway(flaky) as url, GatewaySource(url) as source:
        assert await fetch_file(dag.root, [source], max_bytes=100, options=FAST) == b"small file"
    assert calls == 3 and source.stats.failures == 2 and source.stats.requests == 3


async def test_slow_source_times_out_and_the_next_is_used(honest: TrustlessGateway, dag: ImportedDag) -> None:
    async def stall(request: web.Request, cid: str) -> web.Response:
        await asyncio.sleep(1)
        return web.Response(status=500)

    options = FetchOptions(timeout_s=0.2, attempts=1)
    async with HostileGateway(stall) as url, GatewaySource(url) as slow, GatewaySource(honest.url) as good:
        with pytest.raises(SourcesExhaustedError) as err:
            await fetch_file(raw_leaves(dag)[0], [slow], max_bytes=1 << 20, options=options)
        assert err.value.failures[slow.name].reason == "timeout"
        assert await fetch_adapter_dir(dag.root, [slow, good], max_bytes=dag.size, options=options) == FILES


async def test_car_that_goes_bad_falls_back_to_blocks(
    tmp_path: Path, honest: TrustlessGateway, dag: ImportedDag
) -> None:
    bad_store = BlockStore(tmp_path / "tampered")
    bad_store.put_dag(dag)
    victim = raw_leaves(dag)[-1]
    bad_store.path_for(victim).write_bytes(b"\0" * 100)
    liar = TrustlessGateway(bad_store)
    await liar.start()
    try:
        async with GatewaySource(liar.url, mode="car") as car, GatewaySource(honest.url) as blocks:
            assert await fetch_adapter_dir(dag.root, [car, blocks], max_bytes=dag.size) == FILES
        assert car.stats.last_error is not None and car.stats.last_error.startswith("block-integrity")
        # blocks that arrived in the CAR before the bad one were kept, not fetched again
        assert sum(honest.requests.values()) < len(dag.blocks)
    finally:
        await liar.stop()


async def test_third_party_sources_without_max_size_work() -> None:
    """A source written elsewhere (e.g. bitswap) only has get_block(cid) and raises its own errors."""
    dag = import_file(MODEL)

    class Peers:
        name = "peers"

        async def get_block(self, cid: str) -> bytes:
            if cid == raw_leaves(dag)[0]:
                raise LookupError("no peer has it")
            return dag.blocks[cid]

    class Backup:
        async def get_block(self, cid: str) -> bytes:
            return dag.blocks[cid]

    peers, backup = Peers(), Backup()
    assert await fetch_file(dag.root, [peers, backup], max_bytes=dag.size) == MODEL
    assert peers.stats.failures == 1 and backup.stats.requests == 1  # type: ignore[attr-defined]


class _ReversedSource:
    """Delivers a file's blocks in reverse order: each leaf waits until every later leaf was delivered."""

    def __init__(self, dag: ImportedDag) -> None:
        self.blocks = dag.blocks
        self.order = raw_leaves(dag)
        self.delivered: list[str] = []
        self._turn = asyncio.Condition()

    async def get_block(self, cid: str) -> bytes:
        if cid in self.order:
            async with self._turn:
                later = self.order[self.order.index(cid) + 1 :]
                await self._turn.wait_for(lambda: all(c in self.delivered for c in later))
                self.delivered.append(cid)
                self._turn.notify_all()
        return self.blocks[cid]


async def test_file_hash_is_computed_in_file_order_whatever_order_blocks_arrive(dag: ImportedDag) -> None:
    source = _ReversedSource(dag)
    fetched = await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST)
    assert source.delivered == list(reversed(source.order))  # really out of order
    weights = fetched["adapter_model.safetensors"]
    assert bytes(weights.data) == MODEL and weights.sha256 == hashlib.sha256(MODEL).digest()
    config = fetched["adapter_config.json"]  # one block: no assembly
    assert config.data == FILES["adapter_config.json"]
    assert config.sha256 == hashlib.sha256(FILES["adapter_config.json"]).digest()


async def test_fetch_into_a_folder_writes_the_files_and_hashes_them(dag: ImportedDag, tmp_path: Path) -> None:
    source = _ReversedSource(dag)  # out of order: blocks land at their offsets in the file
    out = tmp_path / "into"
    out.mkdir()
    fetched = await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST, into=out)
    for name, content in FILES.items():
        got = fetched[name]
        assert got.data is None and got.path == out / name and got.size == len(content)
        assert (out / name).read_bytes() == content and got.sha256 == hashlib.sha256(content).digest()
