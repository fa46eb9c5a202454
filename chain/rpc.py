"""Several JSON-RPC endpoints behind one web3 provider: failover with health and backoff.

A request goes to the healthiest endpoint first; a transport error (connection refused, timeout,
429, 5xx) marks that endpoint down for a growing back-off and the request moves to the next one. JSON-RPC
errors (a revert, a bad parameter, a refused log range) are answers, not outages: they are returned as
they are. An endpoint whose head lags the best one by more than `max_lag_blocks` is out of rotation until
it catches up (`probe_heads`): a stale answer is worse than an error."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from web3 import AsyncHTTPProvider
from web3.providers.async_base import AsyncBaseProvider
from web3.types import RPCEndpoint, RPCResponse

log = logging.getLogger("openlora.rpc")


class AllEndpointsDownError(ConnectionError):
    pass


@dataclass
class EndpointHealth:
    url: str
    failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    errors_total: int = 0
    last_error: str = ""
    latency_s: float = 0.0  # exponential moving average
    head: int | None = None  # eth_blockNumber at the last successful probe
    head_fresh: bool = False  # the last probe answered (a down endpoint's old head is not a reference)
    lagging: bool = False  # out of rotation: its head is more than max_lag_blocks behind the best

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until


@dataclass
class _Endpoint:
    provider: AsyncHTTPProvider
    health: EndpointHealth
    extra: dict = field(default_factory=dict)


class FailoverProvider(AsyncBaseProvider):
    def __init__(
        self,
        urls: list[str],
        *,
        timeout_s: float = 10.0,
        max_backoff_s: float = 30.0,
        max_lag_blocks: int = 10,
        probe_interval_s: float = 5.0,
        retries: int = 2,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("FailoverProvider needs at least one endpoint URL")
        self.max_backoff_s = max_backoff_s
        self.max_lag_blocks = max_lag_blocks
        self.probe_interval_s = probe_interval_s
        self.retries = retries
        self._probed_at = float("-inf")
        self.endpoints = [
            _Endpoint(
                AsyncHTTPProvider(
                    u, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
                ),
                EndpointHealth(u),
            )
            for u in urls
        ]

    def health(self) -> list[EndpointHealth]:
        return [e.health for e in self.endpoints]

    def _order(self) -> list[_Endpoint]:
        in_sync = [e for e in self.endpoints if not e.health.lagging]
        up = [e for e in in_sync if e.health.up]
        down = sorted((e for e in in_sync if not e.health.up), key=lambda e: e.health.down_until)
        return up + down  # when all are down, still try the one that recovers soonest

    def lowest_head_in_rotation(self) -> int | None:
        """The lowest probed head among endpoints in rotation: a reader that never asks past it gets
        complete answers from whichever of them serves the request (a node behind answers `eth_getLogs`
        for blocks it lacks with nothing at all, silently). None with a single endpoint in rotation."""
        in_rotation = [e for e in self.endpoints if not e.health.lagging]
        if len(in_rotation) < 2:
            return None  # one endpoint: reads go to it or fail, never to another one further behind
        return min((e.health.head for e in in_rotation if e.health.head_fresh), default=None)

    async def probe_heads(self, *, force: bool = False) -> int | None:
        """Ask every endpoint for its head (at most every `probe_interval_s`); mark those more than
        `max_lag_blocks` behind the best as lagging (out of rotation). Returns the best head seen."""
        now = time.monotonic()
        if not force and now - self._probed_at < self.probe_interval_s:
            return max((e.health.head for e in self.endpoints if e.health.head is not None), default=None)
        self._probed_at = now
        for e in self.endpoints:
            e.health.head_fresh = False
            for attempt in range(3):
                try:
                    response = await e.provider.make_request(RPCEndpoint("eth_blockNumber"), [])
                    e.health.head, e.health.head_fresh = int(response["result"], 16), True
                    break
                except Exception as err:  # unreachable now: the request path backs it off
                    e.health.last_error = f"{type(err).__name__}: {err}"
                    await asyncio.sleep(0.05 * (attempt + 1))
        fresh = [e for e in self.endpoints if e.health.head_fresh]
        if not fresh:
            return None
        best = max(e.health.head for e in fresh)
        for e in fresh:  # an endpoint that did not answer keeps its standing until it does
            lagging = best - e.health.head > self.max_lag_blocks
            if lagging != e.health.lagging:
                behind = best - (e.health.head or 0)
                if lagging:
                    log.warning(
                        "RPC %s lags %d blocks behind the best endpoint: out of rotation",
                        e.health.url,
                        behind,
                    )
                else:
                    log.info("RPC %s caught up: back in rotation", e.health.url)
            e.health.lagging = lagging
        return best

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        """Healthiest endpoint first, failing over on transport errors; when every endpoint failed, the
        round is retried `retries` times after a short pause (a 429 or a dropped connection is usually
        gone a moment later), then AllEndpointsDownError."""
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(0.1 * 2 ** (attempt - 1))
            for endpoint in self._order():
                h = endpoint.health
                h.requests += 1
                started = time.monotonic()
                try:
                    response = await endpoint.provider.make_request(method, params)
                except Exception as e:  # transport failure: try the next endpoint
                    h.failures += 1
                    h.errors_total += 1
                    h.last_error = f"{type(e).__name__}: {e}"
                    h.down_until = time.monotonic() + min(self.max_backoff_s, 0.5 * 2 ** min(h.failures, 8))
                    if h.failures == 1:
                        log.warning("RPC %s failed (%s): failing over", h.url, h.last_error)
                    errors.append(f"{h.url}: {h.last_error}")
                    continue
                if h.failures:
                    log.info("RPC %s is back after %d failure(s)", h.url, h.failures)
                h.failures, h.down_until = 0, 0.0
                h.latency_s = 0.8 * h.latency_s + 0.2 * (time.monotonic() - started)
                return response
        raise AllEndpointsDownError("all RPC endpoints failed: " + "; ".join(errors[-len(self.endpoints) :]))

    async def is_connected(self, show_traceback: bool = False) -> bool:
        for e in self.endpoints:
            try:
                if await e.provider.is_connected():
                    return True
            except Exception:
                continue
        return False

    async def disconnect(self) -> None:
        for e in self.endpoints:
            await e.provider.disconnect()
