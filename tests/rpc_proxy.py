"""A real HTTP JSON-RPC server in front of Anvil that behaves like hosted providers do: capped
`eth_getLogs` ranges and result counts (with their real error messages), 429s and timeouts, a head that
lags, an endpoint that is down or still syncing. Every request is recorded for the test to check."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

from aiohttp import ClientSession, ClientTimeout, web

from chain.devnet import free_port


@dataclass
class ProviderLimits:
    max_log_blocks: int | None = None  # geth: "exceed maximum block range: N"
    max_log_results: int | None = (
        None  # Infura: "query returned more than N results. Try with this block range"
    )
    fail_rate: float = 0.0  # share of calls answered 429 or left to time out
    timeout_s: float = 0.0  # how long a "timed out" call hangs before the proxy drops it
    lag_blocks: int = 0  # this endpoint's head is behind the real one
    down: bool = False  # 503 for everything
    syncing: bool = False  # eth_syncing answers an object
    fail_methods: set[str] = field(default_factory=set)  # these methods answer a JSON-RPC error
    slow_log_blocks: int | None = None  # eth_getLogs over more blocks than this hangs past the timeout


class RpcProxy:
    def __init__(self, upstream: str, limits: ProviderLimits | None = None, seed: int = 0) -> None:
        self.upstream = upstream
        self.limits = limits or ProviderLimits()
        self.rng = random.Random(seed)
        self.calls: list[tuple[str, list]] = []
        self.get_logs_ranges: list[tuple[int, int]] = []  # ranges this endpoint answered
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self._http: ClientSession | None = None
        self.url = ""

    async def start(self) -> str:
        self._http = ClientSession(timeout=ClientTimeout(total=30))
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._http:
            await self._http.close()

    async def _up(self, method: str, params: list) -> dict:
        async with self._http.post(
            self.upstream, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        ) as r:
            return await r.json()

    async def _head(self) -> int:
        return int((await self._up("eth_blockNumber", []))["result"], 16) - self.limits.lag_blocks

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if isinstance(body, list):  # batches: answered one by one
            return web.json_response([await self._one(b) for b in body])
        limits = self.limits
        if limits.down:
            return web.Response(status=503, text="Service Unavailable")
        if limits.fail_rate and self.rng.random() < limits.fail_rate:
            if self.rng.random() < 0.5:
                return web.Response(status=429, text='{"error":"Too Many Requests"}')
            await asyncio.sleep(limits.timeout_s)
            return web.Response(status=504, text="Gateway Timeout")
        return web.json_response(await self._one(body))

    async def _one(self, body: dict) -> dict:
        method, params, rid = body["method"], body.get("params", []), body.get("id")
        self.calls.append((method, params))
        limits = self.limits

        def error(code: int, message: str) -> dict:
            self.refused += 1
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}

        if method in limits.fail_methods:
            return error(-32603, f"internal error serving {method}")
        if method == "eth_syncing" and limits.syncing:
            return {
                "jsonrpc": "2.0",
                "id": rid,
                "result": {"startingBlock": "0x0", "currentBlock": "0x1", "highestBlock": "0xffff"},
            }
        if limits.lag_blocks:
            head = await self._head()
            if method == "eth_blockNumber":
                return {"jsonrpc": "2.0", "id": rid, "result": hex(head)}
            if method == "eth_getBlockByNumber":
                tag = params[0]
                number = head if tag in ("latest", "pending", "safe", "finalized") else int(tag, 16)
                if number > head:
                    return {"jsonrpc": "2.0", "id": rid, "result": None}
                params = [hex(number), *params[1:]]
        if method == "eth_getLogs" and limits.slow_log_blocks:
            span = int(params[0]["toBlock"], 16) - int(params[0]["fromBlock"], 16) + 1
            if span > limits.slow_log_blocks:
                await asyncio.sleep(limits.timeout_s)
                return error(-32000, "upstream request timeout")
        if method == "eth_getLogs":
            f = dict(params[0])
            head = await self._head()
            start = (
                int(f["fromBlock"], 16)
                if isinstance(f["fromBlock"], str) and f["fromBlock"].startswith("0x")
                else 0
            )
            end = int(f["toBlock"], 16) if str(f.get("toBlock", "")).startswith("0x") else head
            end = min(end, head)  # a lagging node answers what it has
            if limits.max_log_blocks and end - start + 1 > limits.max_log_blocks:
                return error(-32000, f"exceed maximum block range: {limits.max_log_blocks}")
            f["toBlock"] = hex(end)
            answer = await self._up(method, [f])
            logs = answer.get("result") or []
            if limits.max_log_results and len(logs) > limits.max_log_results:
                last = int(logs[limits.max_log_results - 1]["blockNumber"], 16) - 1
                return error(
                    -32005,
                    f"query returned more than {limits.max_log_results} results. Try with this block range "
                    f"[{hex(start)}, {hex(max(start, last))}].",
                )
            self.get_logs_ranges.append((start, end))
            return {**answer, "id": rid}
        answer = await self._up(method, params)
        return {**answer, "id": rid}
