"""Fetch + verify throughput of an adapter through a local trustless gateway, against plain
hashlib.sha256 of the same bytes measured in the same run.

    .venv/bin/python scripts/bench/fetch.py [--mib 45] [--repeats 3]

The gateway runs as a separate process (`python -m inference.ipfs.gateway_server`), as a real gateway
would; "local_store_no_http" reads the same blocks from disk through the same verifying fetcher, to
separate the cost of verification from the cost of HTTP. "verify" means: every block checked against
its CID, the DAG's sizes checked, and the file's sha256 (computed while the blocks stream in) compared
with the registry hash. Prints one JSON object; ratio = fetch MB/s / sha256 MB/s.

The "_to_disk" modes write the blocks straight into files as the node's disk tier does (no fsync).
More baselines from the same run say where the time goes: "copy_to_new_buffer" (bytearray(data): one
allocation and copy of the file, what any fetch must at least do once), "car_download_only" (the same CAR
over the same HTTP connection, read and discarded: no parsing, no hashing), "store_read_only" (every
block file of the local store read, nothing else) and "verify_only_two_threads" (the two hashes any
verified fetch must do, with no I/O at all: every block's sha256 on one thread, the file's on another)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.ipfs.blockstore import BlockStore  # noqa: E402
from inference.ipfs.fetcher import (  # noqa: E402
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    fetch_adapter,
)
from inference.ipfs.unixfs import import_directory  # noqa: E402


class _Closing:
    """Lets a source without HTTP sit in the same `async with` as the others."""

    def __init__(self, source: LocalStoreSource) -> None:
        self.source = source

    async def __aenter__(self) -> LocalStoreSource:
        return self.source

    async def __aexit__(self, *exc: object) -> None:
        return None


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


def _verify_only(dag_blocks: list[bytes], model: bytes) -> float:
    """Seconds for the two hashes a verified fetch needs, on two threads, bytes already in memory."""
    file_hash = threading.Thread(target=lambda: hashlib.sha256(model).digest())
    t = time.perf_counter()
    file_hash.start()
    for block in dag_blocks:
        hashlib.sha256(block).digest()
    file_hash.join()
    return time.perf_counter() - t


def _best_rate(nbytes: int, seconds: list[float]) -> float:
    return nbytes / min(seconds) / 1e6


async def _run(mib: int, repeats: int) -> dict[str, object]:
    model = hashlib.shake_256(b"openlora-bench-fetch").digest(mib << 20)
    content_hash = hashlib.sha256(model).digest()
    dag = import_directory({"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": model})
    with tempfile.TemporaryDirectory() as tmp:
        BlockStore(Path(tmp)).put_dag(dag)
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        gateway = subprocess.Popen(
            [sys.executable, "-m", "inference.ipfs.gateway_server", "--store", tmp, "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            await _wait_ready(url, dag.root)
            sha_times, copy_times, download_times, read_times, verify_times = [], [], [], [], []
            store = BlockStore(Path(tmp))
            block_list = list(dag.blocks.values())
            for _ in range(repeats):
                t = time.perf_counter()
                for cid in dag.blocks:
                    store.path_for(cid).read_bytes()
                read_times.append(time.perf_counter() - t)
                verify_times.append(_verify_only(block_list, model))
                t = time.perf_counter()
                hashlib.sha256(model).digest()
                sha_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                copy = bytearray(model)
                copy_times.append(time.perf_counter() - t)
                del copy
            async with aiohttp.ClientSession(read_bufsize=4 << 20) as http:
                for _ in range(repeats):
                    t = time.perf_counter()
                    async with http.get(f"{url}/ipfs/{dag.root}?format=car") as r:
                        async for _chunk, _ in r.content.iter_chunks():
                            pass
                    download_times.append(time.perf_counter() - t)
            results: dict[str, object] = {}
            for label, make, to_disk in (
                ("car", lambda: GatewaySource(url, mode="car"), False),
                ("car_to_disk", lambda: GatewaySource(url, mode="car"), True),
                ("raw_blocks", lambda: GatewaySource(url), False),
                ("kubo_rpc_blocks", lambda: KuboRpcSource(url), False),
                ("local_store_no_http", lambda: _Closing(LocalStoreSource(store)), False),
                ("local_store_to_disk", lambda: _Closing(LocalStoreSource(store)), True),
            ):
                times = []
                for _ in range(repeats):
                    with tempfile.TemporaryDirectory(dir=tmp) as into:
                        async with make() as source:
                            t = time.perf_counter()
                            files = await fetch_adapter(
                                dag.root, [source], max_bytes=dag.size, into=Path(into) if to_disk else None
                            )
                            ok = files["adapter_model.safetensors"].sha256 == content_hash  # registry check
                            times.append(time.perf_counter() - t)
                        assert ok, "fetched bytes do not match the content hash"
                        weights = files["adapter_model.safetensors"]
                        assert (weights.path.read_bytes() if to_disk else weights.data) == model
                results[label] = round(_best_rate(len(model), times), 1)
        finally:
            gateway.terminate()
            gateway.wait(10)
    sha = _best_rate(len(model), sha_times)
    ceilings = {
        "copy_to_new_buffer": round(_best_rate(len(model), copy_times), 1),
        "car_download_only": round(_best_rate(len(model), download_times), 1),
        "store_read_only": round(_best_rate(len(model), read_times), 1),
        "verify_only_two_threads": round(_best_rate(len(model), verify_times), 1),
    }
    return {
        "bench": "fetch",
        "file_mib": mib,
        "blocks": len(dag.blocks),
        "sha256_mb_s": round(sha, 1),
        "fetch_verify_mb_s": results,
        "ratio_vs_sha256": {k: round(v / sha, 3) for k, v in results.items()},  # type: ignore[operator]
        "goal_ratio": 0.5,
        "baselines_mb_s": ceilings,
        "baseline_ratio_vs_sha256": {k: round(v / sha, 3) for k, v in ceilings.items()},
        "car_vs_download_only": round(results["car"] / ceilings["car_download_only"], 3),  # type: ignore[operator]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=45)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.mib, args.repeats)), indent=1))


if __name__ == "__main__":
    main()
