"""The trustless gateway, the block store and CARv1 over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from inference.ipfs.blockstore import BlockMismatchError, BlockStore
from inference.ipfs.car import CarError, CarReader, car_bytes, read_car
from inference.ipfs.cid import parse_cid
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.unixfs import import_directory, import_file, read_file

MODEL = hashlib.shake_256(b"gateway-test-model").digest(700_000)
FILES = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": MODEL}


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    return BlockStore(tmp_path / "blocks")


# ---- block store


def test_blockstore_verifies_and_names_blocks_by_multihash(store: BlockStore) -> None:
    dag = import_file(b"hello adapters\n")
    store.put(dag.root, dag.blocks[dag.root])
    assert store.has(dag.root) and store.get(dag.root) == b"hello adapters\n"
    path = store.path_for(dag.root)
    assert path.parent.parent == store.root / "blocks" and path.name.startswith("ciq")  # multihash, base32
    with pytest.raises(BlockMismatchError, match="does not hash to"):
        store.put(dag.root, b"something else")
    v0 = import_file(b"x" * 10, cid_version=0)
    assert store.get(v0.root) is None


def test_blockstore_drops_rotten_blocks_and_cleans_temp_files(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    dag = import_file(b"payload" * 100)
    store.put_dag(dag)
    store.path_for(dag.root).write_bytes(b"bit rot")
    assert store.get(dag.root, verify=False) == b"bit rot"
    assert store.get(dag.root) is None and not store.has(dag.root)  # verified read removes it
    (tmp_path / "tmp" / "half-written.part").write_bytes(b"partial")
    BlockStore(tmp_path)  # a restart after a crash mid-write
    assert list((tmp_path / "tmp").iterdir()) == []


# ---- CAR


def test_car_round_trip_and_streaming_reader() -> None:
    dag = import_directory(FILES)
    car = car_bytes([dag.root], dag.blocks.items())
    roots, blocks = read_car(car)
    assert [r.text for r in roots] == [dag.root]
    assert {c.text: b for c, b in blocks} == dag.blocks
    reader = CarReader(max_block_size=1 << 20, max_total=1 << 30)
    got = []
    for i in range(0, len(car), 1000):  # arbitrary split points, as from a socket
        got += reader.feed(car[i : i + 1000])
    reader.finish()
    assert len(got) == len(dag.blocks)


def test_car_reader_any_chunking_gives_the_same_blocks() -> None:
    dag = import_directory(FILES)
    car = car_bytes([dag.root], dag.blocks.items())
    rng = random.Random(4)
    for _ in range(40):
        reader, got, i = CarReader(max_block_size=1 << 20, max_total=1 << 30), [], 0
        while i < len(car):  # chunk sizes from 1 byte (inside a varint or a CID) to several blocks
            n = rng.choice([1, 3, 37, 4096, 262_144, 700_000])
            got += reader.feed(car[i : i + n])
            i += n
        reader.finish()
        assert [(c.text, b) for c, b in got] == list(dag.blocks.items())


def test_car_reader_refuses_bad_streams() -> None:
    dag = import_directory(FILES)
    car = car_bytes([dag.root], dag.blocks.items())
    tampered = bytearray(car)
    tampered[len(car) // 2] ^= 1
    with pytest.raises(CarError) as err:
        read_car(bytes(tampered))
    assert err.value.reason == "block-integrity"
    with pytest.raises(CarError) as err:
        read_car(car[:-10])
    assert err.value.reason == "truncated"
    with pytest.raises(CarError) as err:
        read_car(car, max_total=100_000)
    assert err.value.reason == "too-large"
    with pytest.raises(CarError) as err:
        read_car(car, max_block_size=1000)  # a section bigger than any block may be: refused before buffering
    assert err.value.reason == "too-large"
    with pytest.raises(CarError, match="CAR version"):
        read_car(b"\x11\xa2\x65roots\x80\x67version\x02")


# ---- the gateway over HTTP


async def test_gateway_serves_raw_blocks_and_cars(store: BlockStore) -> None:
    dag = import_directory(FILES)
    store.put_dag(dag)
    gateway = TrustlessGateway(store)
    url = await gateway.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{url}/ipfs/{dag.root}", headers={"Accept": "application/vnd.ipld.raw"}
            ) as r:
                assert r.status == 200 and r.content_type == "application/vnd.ipld.raw"
                assert await r.read() == dag.blocks[dag.root]
            async with http.get(
                f"{url}/ipfs/{dag.root}", headers={"Accept": "application/vnd.ipld.car"}
            ) as r:
                assert r.status == 200 and r.content_type == "application/vnd.ipld.car"
                roots, blocks = read_car(await r.read())
            assert [c.text for c in roots] == [dag.root]
            assert {c.text: b for c, b in blocks} == dag.blocks
            assert blocks[0][0].text == dag.root  # depth-first from the root
            async with http.get(f"{url}/ipfs/{dag.root}?format=raw") as r:
                assert await r.read() == dag.blocks[dag.root]
            async with http.get(f"{url}/ipfs/{dag.root}?format=car") as r:
                assert r.status == 200
            async with http.get(f"{url}/ipfs/{dag.root}", headers={"Accept": "text/html"}) as r:
                assert r.status == 406
            missing = import_file(b"not stored").root
            async with http.get(f"{url}/ipfs/{missing}?format=raw") as r:
                assert r.status == 404
            async with http.get(f"{url}/ipfs/{missing}?format=car") as r:
                assert r.status == 404
            async with http.get(f"{url}/ipfs/not-a-cid?format=raw") as r:
                assert r.status == 400
            async with http.post(f"{url}/api/v0/block/get", params={"arg": dag.root}) as r:
                assert await r.read() == dag.blocks[dag.root]
            async with http.post(f"{url}/api/v0/block/get", params={"arg": missing}) as r:
                assert r.status == 500 and "not found" in (await r.json())["Message"]
    finally:
        await gateway.stop()
    assert gateway.requests[f"raw:{dag.root}"] == 2 and gateway.requests[f"car:{dag.root}"] == 2


async def test_gateway_car_of_a_partial_dag_is_404(store: BlockStore) -> None:
    dag = import_file(MODEL)
    store.put_dag(dag)
    leaf = next(c for c in dag.blocks if parse_cid(c).codec == 0x55)
    store.delete(leaf)
    gateway = TrustlessGateway(store)
    url = await gateway.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/ipfs/{dag.root}?format=car") as r:
            assert r.status == 404 and leaf in await r.text()
    finally:
        await gateway.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_gateway_runs_standalone(store: BlockStore) -> None:
    dag = import_file(MODEL)
    store.put_dag(dag)
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "inference.ipfs.gateway_server",
            "--store",
            str(store.root),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "trustless gateway" in await asyncio.to_thread(proc.stdout.readline)  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/ipfs/{dag.root}?format=car") as r,
        ):
            _, blocks = read_car(await r.read())
        assert read_file(dag.root, {c.text: b for c, b in blocks}) == MODEL
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
