"""The pipelined verified fetch: blocks cut out of socket chunks without copying, hashed in worker threads
while the stream is still arriving, written in file order. Hostile CAR streams (a wrong block in the
middle, a truncated body, too many bytes, blocks out of order) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from inference.ipfs.assembly import Assembly, FileSink
from inference.ipfs.blockdata import Pieces, block_matches, sha256_of
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.car import CarError, CarFramer, car_bytes
from inference.ipfs.cid import RAW, make_cid, parse_cid
from inference.ipfs.dagpb import decode_node
from inference.ipfs.fetcher import (
    FetchOptions,
    GatewaySource,
    LocalStoreSource,
    SizeLimitError,
    SourcesExhaustedError,
    fetch_adapter,
    fetch_file,
)
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.protowire import decode_varint
from inference.ipfs.unixfs import ImportedDag, import_directory, import_file
from inference.store import AdapterStore
from tests.local_http import honest_gateway, raw_leaves, serve

# 41 leaves under one root: hashed in many verification batches (1 MiB each) and written in several
# batches, so a bad block can sit in the middle of the pipeline.
MODEL = hashlib.shake_256(b"pipeline-test-model").digest(40 * 262_144 + 12_345)
FILES = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": MODEL}
FAST = FetchOptions(timeout_s=5, attempts=1, backoff_s=0.01)


@pytest.fixture
def dag() -> ImportedDag:
    return import_directory(FILES)


@pytest.fixture
async def honest(tmp_path: Path, dag: ImportedDag) -> AsyncIterator[TrustlessGateway]:
    async with honest_gateway(tmp_path / "honest", dag) as gateway:
        yield gateway


CarHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CarGateway:
    """A real gateway whose CAR answers the test writes (raw block requests are answered honestly)."""

    def __init__(self, dag: ImportedDag, car: CarHandler) -> None:
        self.dag = dag
        self.car = car
        self.raw_requests = 0
        self.car_requests = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.query.get("format") == "car":
            self.car_requests += 1
            return await self.car(request)
        self.raw_requests += 1
        block = self.dag.blocks.get(parse_cid(request.match_info["cid"]).text)
        if block is None:
            return web.Response(status=404)
        return web.Response(body=block, content_type="application/vnd.ipld.raw")

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._handle)
        self._runner, url = await serve(app)
        return url

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def dfs_blocks(dag: ImportedDag) -> list[tuple[str, bytes]]:
    """The DAG's blocks in the order the honest gateway streams them (depth first, each once)."""
    out: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    stack = [dag.root]
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        out.append((cid, dag.blocks[cid]))
        if parse_cid(cid).codec != RAW:
            stack.extend(reversed([link.cid.text for link in decode_node(dag.blocks[cid]).links]))
    return out


async def send_car(request: web.Request, body: bytes, *, cut_at: int | None = None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
    response.content_length = len(body)
    await response.prepare(request)
    for i in range(0, cut_at if cut_at is not None else len(body), 100_000):  # many socket reads
        await response.write(body[i : min(i + 100_000, cut_at or len(body))])
    if cut_at is not None:
        assert request.transport is not None
        request.transport.close()  # the connection dies mid-stream
        return response
    await response.write_eof()
    return response


# ---- the framer: zero-copy, any chunking


def test_framer_cuts_blocks_across_chunk_boundaries_without_copying(dag: ImportedDag) -> None:
    car = car_bytes([dag.root], dfs_blocks(dag))
    rng = random.Random(7)
    for _ in range(20):
        framer = CarFramer(max_block_size=1 << 20, max_total=1 << 30)
        chunks, got, i = [], [], 0
        while i < len(car):  # a block boundary anywhere: inside a varint, a CID, or a block's bytes
            n = rng.choice([1, 5, 41, 4096, 100_000, 262_144, 300_000, 1 << 20])
            chunk = car[i : i + n]
            chunks.append(chunk)
            got += framer.feed(chunk)
            i += n
        framer.finish()
        assert [(c.text, p.tobytes()) for c, p in got] == dfs_blocks(dag)
        ids = {id(c) for c in chunks}
        for cid, pieces in got:
            assert isinstance(pieces, Pieces) and block_matches(cid, pieces)
            assert sha256_of(pieces) == hashlib.sha256(pieces.tobytes()).digest()
            assert all(id(part.obj) in ids for part in pieces.parts)  # views of the chunks: no copy
        assert any(len(p.parts) > 1 for _, p in got)  # some blocks really straddle two reads


def test_framer_refuses_truncated_and_oversize_streams(dag: ImportedDag) -> None:
    car = car_bytes([dag.root], dfs_blocks(dag))
    framer = CarFramer(max_block_size=1 << 20, max_total=1 << 30)
    framer.feed(car[:-100])
    with pytest.raises(CarError) as err:
        framer.finish()
    assert err.value.reason == "truncated"
    framer = CarFramer(max_block_size=1 << 20, max_total=len(MODEL) // 2)
    with pytest.raises(CarError) as err:
        framer.feed(car)
    assert err.value.reason == "too-large"
    framer = CarFramer(max_block_size=1 << 20, max_total=1 << 30)
    header_length, start = decode_varint(car, 0)
    identity = b"\x05\x01\x55\x00\x01x"  # a section whose CID "hashes" with the identity function
    with pytest.raises(CarError, match="bad CID"):
        framer.feed(car[: start + header_length] + identity)


# ---- hostile CAR streams through the whole fetch


async def test_wrong_block_mid_stream_is_refused_and_nothing_is_cached(
    tmp_path: Path, dag: ImportedDag
) -> None:
    blocks = dfs_blocks(dag)
    victim = raw_leaves(dag)[len(raw_leaves(dag)) // 2]
    tampered = [(c, bytes([b[0] ^ 1]) + b[1:] if c == victim else b) for c, b in blocks]
    body = car_bytes([dag.root], tampered)

    async def lying_car(request: web.Request) -> web.StreamResponse:
        return await send_car(request, body)

    liar = CarGateway(dag, lying_car)
    liar.dag = ImportedDag(dag.root, dict(tampered), dag.size)  # its raw answers lie the same way
    async with liar as url, GatewaySource(url, mode="car") as source:
        store = AdapterStore(
            tmp_path / "cache", budget_bytes=1 << 30, sources=[source], max_adapter_bytes=dag.size
        )
        with pytest.raises(SourcesExhaustedError) as err:
            await store.get(dag.root, hashlib.sha256(MODEL).digest())
    assert err.value.cid == victim and err.value.failures[source.name].reason == "block-integrity"
    assert source.stats.last_error is not None and source.stats.last_error.startswith("block-integrity")
    assert not store.contains(dag.root)
    assert list((tmp_path / "cache" / "adapters").iterdir()) == []  # nothing unverified became an entry
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


async def test_wrong_block_mid_stream_falls_back_and_keeps_the_blocks_before_it(
    dag: ImportedDag, honest: TrustlessGateway
) -> None:
    victim = raw_leaves(dag)[30]
    body = car_bytes([dag.root], [(c, b"\0" * len(b) if c == victim else b) for c, b in dfs_blocks(dag)])

    async def lying_car(request: web.Request) -> web.StreamResponse:
        return await send_car(request, body)

    async with CarGateway(dag, lying_car) as url:
        liar = GatewaySource(url, mode="car")
        async with liar, GatewaySource(honest.url) as backup:
            files = await fetch_adapter(dag.root, [liar, backup], max_bytes=dag.size, options=FAST)
    weights = files["adapter_model.safetensors"]
    assert bytes(weights.data or b"") == MODEL and weights.sha256 == hashlib.sha256(MODEL).digest()
    assert liar.stats.last_error is not None and liar.stats.last_error.startswith("block-integrity")
    assert honest.requests[f"raw:{raw_leaves(dag)[0]}"] == 0  # verified before the bad one: kept


async def test_truncated_car_is_refused_then_completed_block_by_block(
    tmp_path: Path, dag: ImportedDag
) -> None:
    body = car_bytes([dag.root], dfs_blocks(dag))

    async def cut(request: web.Request) -> web.StreamResponse:
        return await send_car(request, body, cut_at=len(body) * 2 // 3)

    gateway = CarGateway(dag, cut)
    async with gateway as url, GatewaySource(url, mode="car") as source:
        out = tmp_path / "into"
        out.mkdir()
        files = await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST, into=out)
    assert (out / "adapter_model.safetensors").read_bytes() == MODEL
    assert files["adapter_model.safetensors"].sha256 == hashlib.sha256(MODEL).digest()
    assert source.stats.last_error is not None and source.stats.last_error.startswith("truncated")
    assert 0 < gateway.raw_requests < len(raw_leaves(dag))  # only what the CAR did not bring


async def test_car_carrying_more_than_the_cap_is_cut_off(dag: ImportedDag) -> None:
    junk = hashlib.shake_256(b"junk").digest(1 << 20)
    body = car_bytes([dag.root], [*dfs_blocks(dag), (make_cid(junk, codec=RAW, version=1), junk)])

    async def oversize(request: web.Request) -> web.StreamResponse:
        return await send_car(request, body)

    async with CarGateway(dag, oversize) as url, GatewaySource(url, mode="car") as source:
        files = await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST)
    assert files["adapter_model.safetensors"].data == MODEL  # every block was in before the excess
    assert source.stats.last_error is not None and source.stats.last_error.startswith("size-limit")


@pytest.mark.timeout(60)  # a write window that waited for a gap would hang here
@pytest.mark.parametrize("order", ["reversed", "parents-first-leaves-reversed"])
async def test_blocks_out_of_order_in_the_car_still_assemble(dag: ImportedDag, order: str) -> None:
    """A CAR in another order (order=unk): leaves before their parents, or after them but last leaf
    first. The write window must not wait for bytes that cannot be written yet (a gap before them)."""
    blocks = dfs_blocks(dag)
    if order == "reversed":
        blocks.reverse()
    else:
        leaves = set(raw_leaves(dag))
        blocks = [b for b in blocks if b[0] not in leaves] + [b for b in reversed(blocks) if b[0] in leaves]
    body = car_bytes([dag.root], blocks)

    async def reordered_car(request: web.Request) -> web.StreamResponse:
        return await send_car(request, body)

    gateway = CarGateway(dag, reordered_car)
    async with gateway as url, GatewaySource(url, mode="car") as source:
        options = FetchOptions(timeout_s=5, car_timeout_s=10, attempts=1)
        files = await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=options)
    assert files["adapter_model.safetensors"].data == MODEL
    assert gateway.raw_requests == 0 and source.stats.failures == 0


async def test_repeated_chunks_come_once_in_the_car_and_fill_every_place(tmp_path: Path) -> None:
    zeros = bytes(9 * 262_144 + 5)  # nine identical chunks: one leaf block linked nine times
    dag = import_file(zeros)
    assert len(raw_leaves(dag)) == 2
    store = BlockStore(tmp_path)
    store.put_dag(dag)
    gateway = TrustlessGateway(store)
    await gateway.start()
    try:
        async with GatewaySource(gateway.url, mode="car") as source:
            assert await fetch_file(dag.root, [source], max_bytes=dag.size) == zeros
    finally:
        await gateway.stop()
    assert sum(gateway.requests.values()) == 1  # the CAR (dups=n) and nothing else


# ---- the local store path


async def test_rotten_block_in_the_local_store_is_refused_and_replaced(
    tmp_path: Path, dag: ImportedDag, honest: TrustlessGateway
) -> None:
    local = BlockStore(tmp_path / "local")
    local.put_dag(dag)
    victim = raw_leaves(dag)[20]
    local.path_for(victim).write_bytes(b"\1" * 262_144)  # same size, wrong bytes
    source = LocalStoreSource(local)
    out = tmp_path / "into"
    out.mkdir()
    with pytest.raises(SourcesExhaustedError) as err:
        await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST, into=out)
    assert err.value.cid == victim and err.value.failures[source.name].reason == "block-integrity"
    async with GatewaySource(honest.url) as backup:
        files = await fetch_adapter(dag.root, [source, backup], max_bytes=dag.size, options=FAST, into=out)
    assert (out / "adapter_model.safetensors").read_bytes() == MODEL
    assert files["adapter_model.safetensors"].sha256 == hashlib.sha256(MODEL).digest()
    assert sum(honest.requests.values()) == 1  # only the rotten block


async def test_oversize_block_in_the_local_store_is_refused_before_it_is_read(
    tmp_path: Path, dag: ImportedDag
) -> None:
    local = BlockStore(tmp_path / "local")
    local.put_dag(dag)
    victim = raw_leaves(dag)[3]
    local.path_for(victim).write_bytes(b"\0" * (4 << 20))
    source = LocalStoreSource(local)
    with pytest.raises(SizeLimitError):
        source.read_block(victim, max_size=262_144)
    with pytest.raises(SourcesExhaustedError) as err:
        await fetch_adapter(dag.root, [source], max_bytes=dag.size, options=FAST)
    assert isinstance(err.value.failures[source.name], SizeLimitError)


# ---- abandoning a fetch


async def test_a_fetch_cancelled_mid_stream_closes_its_file_and_stops_writing(
    tmp_path: Path, dag: ImportedDag
) -> None:
    body = car_bytes([dag.root], dfs_blocks(dag))
    sent_half, release = asyncio.Event(), asyncio.Event()

    async def stalls_halfway(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        sent_half.set()
        await release.wait()
        return response

    out = tmp_path / "into"
    out.mkdir()
    fds_before = len(os.listdir("/proc/self/fd"))
    async with CarGateway(dag, stalls_halfway) as url, GatewaySource(url, mode="car") as source:
        fetch = asyncio.ensure_future(fetch_adapter(dag.root, [source], max_bytes=dag.size, into=out))
        await sent_half.wait()
        await asyncio.sleep(0.2)  # blocks of the first half verified and being written
        fetch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fetch
        written = (out / "adapter_model.safetensors").read_bytes()
        await asyncio.sleep(0.2)
        assert (out / "adapter_model.safetensors").read_bytes() == written  # nothing written after
        release.set()
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # the file (and the connection) closed
    assert written[: len(MODEL) // 4] == MODEL[: len(MODEL) // 4]  # the first blocks were in place


def test_file_sink_refuses_writes_once_closed(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "f", 10)
    sink.write(0, (b"hello",))
    sink.close()
    with pytest.raises(OSError, match="abandoned"):
        sink.write(5, (b"world",))
    assert (tmp_path / "f").read_bytes() == b"hello\0\0\0\0\0"


class FullDisk:
    """A sink on a disk that fills up after `room` bytes (what ENOSPC looks like to the writer)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def write(self, offset: int, parts: tuple[bytes | bytearray | memoryview, ...]) -> None:
        size = sum(len(p) for p in parts)
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size

    def data(self) -> None:
        return None

    def close(self) -> None:
        return None


async def test_a_failing_write_fails_the_readers_instead_of_stalling_them() -> None:
    assembly = Assembly(8 << 20, FullDisk(1 << 20))
    writer = asyncio.ensure_future(assembly.run())
    block = bytes(256 << 10)
    for i in range(32):  # all of it placed: far more than the window
        assembly.put(i * len(block), block)
    with pytest.raises(OSError, match="free space") as err:
        await asyncio.wait_for(assembly.drain(1 << 20), 10)
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        await writer
