"""Several JSON-RPC endpoints behind one web3 provider: failover with health and backoff.

A request goes to the healthiest endpoint first; a transport error (connection refused, timeout,
5xx) marks that endpoint down for a growing back-off and the request moves to the next one. JSON-RPC
errors (a revert, a bad parameter) are answers, not outages: they are returned as they are."""

from __future__ import annotations

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

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until


@dataclass
class _Endpoint:
    provider: AsyncHTTPProvider
    health: EndpointHealth
    extra: dict = field(default_factory=dict)


class FailoverProvider(AsyncBaseProvider):
    def __init__(self, urls: list[str], *, timeout_s: float = 10.0, max_backoff_s: float = 30.0) -> None:
        super().__init__()
        if not urls:
            raise ValueError("FailoverProvider needs at least one endpoint URL")
        self.max_backoff_s = max_backoff_s
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
        up = [e for e in self.endpoints if e.health.up]
        down = sorted((e for e in self.endpoints if not e.health.up), key=lambda e: e.health.down_until)
        return up + down  # when all are down, still try the one that recovers soonest

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        errors: list[str] = []
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
        raise AllEndpointsDownError("all RPC endpoints failed: " + "; ".join(errors))

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
