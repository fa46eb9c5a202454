"""Fetch + verify throughput of an adapter through a local trustless gateway, against plain
hashlib.sha256 of the same bytes measured in the same run.

    .venv/bin/python scripts/bench/fetch.py [--mib 45] [--repeats 3]

The gateway runs as a separate process (`python -m inference.ipfs.gateway_server`), as a real gateway
would; "local_store_no_http" reads the same blocks from disk through the same verifying fetcher, to
separate the cost of verification from the cost of HTTP. "verify" means: every block checked against
its CID, the DAG's sizes checked, and the file's sha256 compared with the registry hash.
Prints one JSON object; ratio = fetch MB/s / sha256 MB/s."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import tempfile
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
    fetch_adapter_dir,
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
            sha_times = []
            for _ in range(repeats):
                t = time.perf_counter()
                hashlib.sha256(model).digest()
                sha_times.append(time.perf_counter() - t)
            results: dict[str, object] = {}
            for label, make in (
                ("car", lambda: GatewaySource(url, mode="car")),
                ("raw_blocks", lambda: GatewaySource(url)),
                ("kubo_rpc_blocks", lambda: KuboRpcSource(url)),
                ("local_store_no_http", lambda: _Closing(LocalStoreSource(BlockStore(Path(tmp))))),
            ):
                times = []
                for _ in range(repeats):
                    async with make() as source:
                        t = time.perf_counter()
                        files = await fetch_adapter_dir(dag.root, [source], max_bytes=dag.size)
                        ok = hashlib.sha256(files["adapter_model.safetensors"]).digest() == content_hash
                        times.append(time.perf_counter() - t)
                    assert ok, "fetched bytes do not match the content hash"
                results[label] = round(_best_rate(len(model), times), 1)
        finally:
            gateway.terminate()
            gateway.wait(10)
    sha = _best_rate(len(model), sha_times)
    return {
        "bench": "fetch",
        "file_mib": mib,
        "blocks": len(dag.blocks),
        "sha256_mb_s": round(sha, 1),
        "fetch_verify_mb_s": results,
        "ratio_vs_sha256": {k: round(v / sha, 3) for k, v in results.items()},  # type: ignore[operator]
        "goal_ratio": 0.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=45)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.mib, args.repeats)), indent=1))


if __name__ == "__main__":
    main()
