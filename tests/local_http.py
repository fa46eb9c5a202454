"""Helpers the IPFS and publishing tests share: a real aiohttp app on a free loopback port, an honest gateway
over a DAG's blocks, and a DAG's raw leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web

from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import RAW, parse_cid
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.unixfs import ImportedDag


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    """Start `app` on 127.0.0.1 (a port the OS picks); returns its runner (`cleanup()` stops it) and URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]


@asynccontextmanager
async def honest_gateway(store_dir: Path, dag: ImportedDag) -> AsyncIterator[TrustlessGateway]:
    """The project's trustless gateway serving every block of `dag`."""
    store = BlockStore(store_dir)
    store.put_dag(dag)
    gateway = TrustlessGateway(store)
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def raw_leaves(dag: ImportedDag) -> list[str]:
    """The CIDs of the DAG's raw (file data) blocks, in import order."""
    return [c for c in dag.blocks if parse_cid(c).codec == RAW]
