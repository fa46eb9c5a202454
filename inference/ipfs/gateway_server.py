"""A trustless IPFS gateway over a BlockStore (the HTTP subset of the IPFS trustless-gateway spec that a
verifying client needs), plus Kubo's `POST /api/v0/block/get` so one process can stand in for a Kubo node's
block API on a test network.

    GET /ipfs/{cid}   Accept: application/vnd.ipld.raw  -> the block          (or ?format=raw)
                      Accept: application/vnd.ipld.car  -> CARv1 of the DAG   (or ?format=car)
    404 unknown block, 400 bad CID, 406 any other Accept (this gateway never serves deserialized files)

    python -m inference.ipfs.gateway_server --store DIR [--host 127.0.0.1] [--port 8080]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from .blockstore import BlockStore
from .car import encode_header
from .cid import DAG_PB, InvalidCidError, ParsedCid, parse_cid
from .dagpb import decode_node
from .protowire import ProtobufError, encode_varint

RAW_TYPE = "application/vnd.ipld.raw"
CAR_TYPE = "application/vnd.ipld.car"


class MissingBlock(Exception):
    pass


def _wanted_format(request: web.Request) -> str | None:
    fmt = request.query.get("format")
    if fmt in ("raw", "car"):
        return fmt
    if fmt is not None:
        return None
    for entry in request.headers.get("Accept", "").split(","):
        media = entry.split(";", 1)[0].strip().lower()
        if media == RAW_TYPE:
            return "raw"
        if media == CAR_TYPE:
            return "car"
    return None


class TrustlessGateway:
    def __init__(
        self, store: BlockStore, host: str = "127.0.0.1", port: int = 0, *, verify_reads: bool = False
    ) -> None:
        """Like Kubo (Datastore.HashOnRead=false), blocks are served as they are on disk: a trustless
        gateway's clients verify every block anyway. verify_reads=True re-hashes each block before
        serving it, so bit rot shows up as a 404 here instead of a failure at the client."""
        self.store = store
        self.host = host
        self.port = port
        self.verify_reads = verify_reads
        self.requests: collections.Counter[str] = (
            collections.Counter()
        )  # "raw:<cid>", "car:<cid>", "rpc:<cid>"
        self._runner: web.AppRunner | None = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._get)
        app.router.add_post("/api/v0/block/get", self._rpc_block_get)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _stored_size(self, cid: ParsedCid) -> int:
        try:
            return self.store.path_for(cid).stat().st_size
        except FileNotFoundError as exc:
            raise MissingBlock(cid.text) from exc

    def _block(self, cid: ParsedCid) -> bytes | None:
        return self.store.get(cid, verify=self.verify_reads)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        try:
            cid = parse_cid(request.match_info["cid"])
        except InvalidCidError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        fmt = _wanted_format(request)
        if fmt is None:
            return web.Response(
                status=406, text=f"this is a trustless gateway: ask for {RAW_TYPE} or {CAR_TYPE}\n"
            )
        self.requests[f"{fmt}:{cid.text}"] += 1
        if fmt == "raw":
            data = self._block(cid)
            if data is None:
                return web.Response(status=404, text=f"block {cid} not found\n")
            return web.Response(body=data, headers=self._headers(cid, RAW_TYPE))
        try:
            order = list(self._dag_order(cid))
            sizes = [self._stored_size(c) for c in order]
        except MissingBlock as exc:
            return web.Response(status=404, text=f"block {exc} of DAG {cid} not found\n")
        header = encode_header([cid])
        header = encode_varint(len(header)) + header
        prefixes = [
            encode_varint(len(c.to_bytes()) + size) + c.to_bytes()
            for c, size in zip(order, sizes, strict=True)
        ]
        response = web.StreamResponse(headers=self._headers(cid, f"{CAR_TYPE}; version=1; order=dfs; dups=n"))
        # A known length spares the client chunked decoding; if a block vanishes mid-stream the response
        # ends short and the client sees a truncated CAR.
        response.content_length = len(header) + sum(map(len, prefixes)) + sum(sizes)
        await response.prepare(request)
        await response.write(header)
        for block_cid, prefix, size in zip(order, prefixes, sizes, strict=True):
            data = self._block(block_cid)
            if data is None or len(data) != size:
                break
            await response.write(prefix)
            await response.write(data)
        await response.write_eof()
        return response

    async def _rpc_block_get(self, request: web.Request) -> web.Response:
        try:
            cid = parse_cid(request.query.get("arg", ""))
        except InvalidCidError as exc:
            return web.json_response({"Message": str(exc), "Code": 0, "Type": "error"}, status=500)
        self.requests[f"rpc:{cid.text}"] += 1
        data = self._block(cid)
        if data is None:
            return web.json_response(
                {"Message": "block was not found locally (offline)", "Code": 0, "Type": "error"}, status=500
            )
        return web.Response(body=data, content_type="application/octet-stream")

    @staticmethod
    def _headers(cid: ParsedCid, content_type: str) -> dict[str, str]:
        return {
            "Content-Type": content_type,
            "Cache-Control": "public, max-age=29030400, immutable",
            "X-Content-Type-Options": "nosniff",
            "Etag": f'"{cid.text}"',
        }

    def _dag_order(self, root: ParsedCid) -> Iterator[ParsedCid]:
        """Depth-first, each block once; checks every block is present before the response starts."""
        seen: set[bytes] = set()
        stack = [root]
        while stack:
            cid = stack.pop()
            if cid.digest in seen:
                continue
            seen.add(cid.digest)
            if cid.codec == DAG_PB:
                data = self._block(cid)
                if data is None:
                    raise MissingBlock(cid.text)
                try:
                    links = decode_node(data).links
                except ProtobufError:
                    links = []  # serve it anyway; the client decides what a bad block means
                stack.extend(reversed([link.cid for link in links]))
            elif not self.store.has(cid):
                raise MissingBlock(cid.text)
            yield cid


async def _serve(store_dir: Path, host: str, port: int, verify_reads: bool) -> None:
    gateway = TrustlessGateway(BlockStore(store_dir), host, port, verify_reads=verify_reads)
    url = await gateway.start()
    print(f"trustless gateway for {store_dir} at {url}/ipfs/<cid>", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a block store as an IPFS trustless gateway")
    parser.add_argument("--store", type=Path, required=True, help="block store directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--verify-reads", action="store_true", help="re-hash every block before serving it")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.store, args.host, args.port, args.verify_reads))


if __name__ == "__main__":
    main()
