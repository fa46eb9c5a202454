"""Verified fetch throughput against the bare download of the same bytes, measured in the same run.

    .venv/bin/python scripts/bench/fetch.py [--mib 45] [--repeats 5]

The gateway runs as a separate process (`python -m inference.ipfs.gateway_server`), as a real gateway
would. "Verified" means: every block checked against its CID, the DAG's sizes checked, and the file's
sha256 (computed while the blocks stream in) compared with the registry hash. Two paths, each against
its own bare transfer of the same bytes:

  car          one CAR response over HTTP   vs  the same CAR request, read and discarded (no parsing)
  local_store  blocks from a local store    vs  reading every block file of that store, nothing else

"_to_disk" writes the files into a folder as the node's disk tier does (no fsync), the others assemble
in memory. Each repeat runs every measurement once, interleaved, so a burst of load on a shared machine
hits all of them alike; the JSON gives medians over the repeats (and the best run). Ceilings from the
same run say what this machine allows at all: sha256 on one thread, the two hashes a verified fetch
must do on two threads with the bytes in memory, and the bare CAR download with both hashes fed from
it on two threads (nothing parsed, nothing written): no verified fetch can beat the last one."""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import queue
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.ipfs.blockstore import BlockStore  # noqa: E402
from inference.ipfs.fetcher import (  # noqa: E402
    BlockSource,
    FetchedFile,
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    fetch_adapter,
)
from inference.ipfs.unixfs import ImportedDag, import_directory  # noqa: E402

GOAL = 0.7
WEIGHTS = "adapter_model.safetensors"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_ready(url: str, cid: str) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{url}/ipfs/{cid}?format=raw") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError(f"gateway at {url} did not come up")


def _hasher(chunks: queue.SimpleQueue[bytes | None]) -> threading.Thread:
    def run() -> None:
        h = hashlib.sha256()
        while (chunk := chunks.get()) is not None:
            h.update(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


async def _download(http: aiohttp.ClientSession, url: str, *, hash_twice: bool = False) -> None:
    """The CAR read and discarded; with hash_twice, every chunk also fed to two sha256 threads."""
    feeds: list[queue.SimpleQueue[bytes | None]] = (
        [queue.SimpleQueue(), queue.SimpleQueue()] if hash_twice else []
    )
    threads = [_hasher(q) for q in feeds]
    async with http.get(url) as r:
        async for chunk, _ in r.content.iter_chunks():
            for q in feeds:
                q.put(chunk)
    for q in feeds:
        q.put(None)
    for thread in threads:
        thread.join()


def _two_hashes_in_memory(blocks: list[bytes], model: bytes) -> None:
    file_hash = threading.Thread(target=lambda: hashlib.sha256(model).digest())
    file_hash.start()
    for block in blocks:
        hashlib.sha256(block).digest()
    file_hash.join()


class _Timer:
    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}

    async def run(self, label: str, work: Callable[[], Awaitable[object]]) -> None:
        t, c = time.perf_counter(), time.process_time()
        await work()
        self.wall.setdefault(label, []).append(time.perf_counter() - t)
        self.cpu.setdefault(label, []).append(time.process_time() - c)

    def sync(self, label: str, work: Callable[[], object]) -> None:
        t = time.perf_counter()
        work()
        self.wall.setdefault(label, []).append(time.perf_counter() - t)

    def mb_s(self, label: str, nbytes: int, *, best: bool = False) -> float:
        seconds = min(self.wall[label]) if best else statistics.median(self.wall[label])
        return round(nbytes / seconds / 1e6, 1)


async def _fetch(
    dag: ImportedDag, source: BlockSource, content_hash: bytes, into: Path | None, out: list[FetchedFile]
) -> None:
    files = await fetch_adapter(dag.root, [source], max_bytes=dag.size, into=into)
    if files[WEIGHTS].sha256 != content_hash:  # the registry check, part of every verified fetch
        raise AssertionError("fetched bytes do not match the content hash")
    out.append(files[WEIGHTS])


async def _run(mib: int, repeats: int) -> dict[str, object]:
    model = hashlib.shake_256(b"openlora-bench-fetch").digest(mib << 20)
    content_hash = hashlib.sha256(model).digest()
    dag = import_directory({"adapter_config.json": b'{"r": 16}', WEIGHTS: model})
    timer = _Timer()
    with tempfile.TemporaryDirectory() as tmp:
        store = BlockStore(Path(tmp))
        store.put_dag(dag)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "inference.ipfs.gateway_server", "--store", tmp, "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        car_url = f"{url}/ipfs/{dag.root}?format=car"
        blocks = list(dag.blocks.values())

        def read_store() -> None:
            for cid in dag.blocks:
                store.path_for(cid).read_bytes()

        try:
            await _wait_ready(url, dag.root)
            async with aiohttp.ClientSession(read_bufsize=4 << 20) as http:
                await _download(http, car_url)  # warm the gateway's page cache and connection
                for _ in range(repeats):
                    timer.sync("sha256_one_thread", lambda: hashlib.sha256(model).digest())
                    timer.sync(
                        "two_hashes_two_threads_in_memory", lambda: _two_hashes_in_memory(blocks, model)
                    )
                    await timer.run("car_bare_download", lambda: _download(http, car_url))
                    await timer.run(
                        "car_bare_download_plus_two_hashes", lambda: _download(http, car_url, hash_twice=True)
                    )
                    timer.sync("local_store_bare_read", read_store)
                    for label, make, to_disk in (
                        ("car", lambda: GatewaySource(url, mode="car", session=http), False),
                        ("car_to_disk", lambda: GatewaySource(url, mode="car", session=http), True),
                        ("local_store", lambda: LocalStoreSource(store), False),
                        ("local_store_to_disk", lambda: LocalStoreSource(store), True),
                        ("raw_blocks", lambda: GatewaySource(url, session=http), False),
                        ("kubo_rpc_blocks", lambda: KuboRpcSource(url, session=http), False),
                    ):
                        with tempfile.TemporaryDirectory(dir=tmp) as into:
                            target = Path(into) if to_disk else None
                            got: list[FetchedFile] = []
                            await timer.run(
                                label, functools.partial(_fetch, dag, make(), content_hash, target, got)
                            )
                            weights = got[0]  # checked outside the timing: the bench's own check
                            if (weights.path.read_bytes() if weights.path else weights.data) != model:
                                raise AssertionError(f"{label}: fetched bytes differ from the published ones")
        finally:
            gateway.terminate()
            gateway.wait(10)
    n = len(model)
    bare = {"car": "car_bare_download", "local_store": "local_store_bare_read"}
    paths: dict[str, dict[str, float]] = {}
    for label in ("car", "car_to_disk", "local_store", "local_store_to_disk"):
        verified, baseline = timer.mb_s(label, n), timer.mb_s(bare[label.removesuffix("_to_disk")], n)
        paths[label] = {
            "verified_mb_s": verified,
            "bare_mb_s": baseline,
            "ratio": round(verified / baseline, 3),
            "best_verified_mb_s": timer.mb_s(label, n, best=True),
            # the file's sha256 is one sequential stream: no verified fetch is faster than one core hashing
            "ratio_vs_sha256_one_thread": round(verified / timer.mb_s("sha256_one_thread", n), 3),
            "cpu_ms_per_fetch": round(statistics.median(timer.cpu[label]) * 1e3, 1),
        }
    ceilings = {
        k: timer.mb_s(k, n)
        for k in (
            "sha256_one_thread",
            "two_hashes_two_threads_in_memory",
            "car_bare_download_plus_two_hashes",
        )
    }
    ceiling = ceilings["car_bare_download_plus_two_hashes"]
    return {
        "bench": "fetch",
        "file_mib": mib,
        "blocks": len(dag.blocks),
        "repeats": repeats,
        "statistic": "median over the repeats, all measurements interleaved in each repeat",
        "verified_vs_bare": paths,
        "goal_ratio": GOAL,
        "goal_met": {k: v["ratio"] >= GOAL for k, v in paths.items()},
        "other_paths_verified_mb_s": {k: timer.mb_s(k, n) for k in ("raw_blocks", "kubo_rpc_blocks")},
        "ceilings_mb_s": ceilings,
        "car_bare_download_cpu_ms": round(statistics.median(timer.cpu["car_bare_download"]) * 1e3, 1),
        "car_to_disk_vs_download_plus_two_hashes": round(paths["car_to_disk"]["verified_mb_s"] / ceiling, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=45)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.mib, args.repeats)), indent=1))


if __name__ == "__main__":
    main()
