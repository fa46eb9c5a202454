"""The operator's HTTP surface (aiohttp): the status page (/), /healthz (alive), /readyz (fit to take jobs,
with its reasons), /metrics (Prometheus, node/metrics.py), /status (JSON), and when enabled the local
OpenAI-style /v1/completions (node/completions.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

from inference.ipfs.gateway_server import TrustlessGateway
from node.metrics import metrics_registry, render

if TYPE_CHECKING:
    from node.daemon import NodeDaemon


class StatusHistory:
    """One sample a second of the counters the status page charts (10 minutes kept)."""

    def __init__(self, daemon: NodeDaemon, keep: int = 600) -> None:
        self.daemon = daemon
        self.samples: collections.deque[dict] = collections.deque(maxlen=keep)

    def sample(self) -> None:
        m = self.daemon.metrics
        self.samples.append(
            {"t": round(time.time(), 1), "tokens": m.tokens_generated, "earned_wei": str(m.earned_wei)}
        )

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            self.sample()
            await asyncio.sleep(period_s)


def status_snapshot(daemon: NodeDaemon, history: StatusHistory | None = None) -> dict:
    engine = daemon.service.engine.stats()
    jobs = daemon.jobs
    recent = jobs.recent(25)
    names = {}  # CID -> registry id, for what the page shows
    for cid in {s.adapter for s in engine.slots if s.adapter} | {
        j.adapter_cid for j in recent if j.adapter_cid
    }:
        record = daemon.registry.adapter_by_cid(cid)
        if record is not None:
            names[cid] = record.adapter_id
    return {
        "operator": daemon.operator.address,
        "signer": daemon.signer.address,
        "base_model": daemon.config.node.base_model,
        "ready": daemon.ready and daemon.readiness.report.ready,
        "not_ready": daemon.readiness.report.reasons,
        "uptime_s": round(time.time() - daemon.metrics.started_at, 1),
        "jobs_by_state": jobs.counts(),
        "recent_jobs": [
            {
                "job_id": j.job_id,
                "state": j.state.value,
                "adapter_id": j.adapter_id,
                "adapter_cid": j.adapter_cid,
                "price_wei": str(j.price),
                "node_amount_wei": str(j.node_amount or 0),
                "claim_tx": j.claim_tx,
                "result_tx": j.result_tx,
                "error": j.error,
                "updated_at": j.updated_at,
            }
            for j in recent
        ],
        "earned_wei": str(daemon.metrics.earned_wei),
        "tokens_generated": daemon.metrics.tokens_generated,
        "engine": engine.to_dict() if hasattr(engine, "to_dict") else _plain(engine),
        "cache": {
            "usage_bytes": daemon.service.store.usage_bytes(),
            "budget_bytes": daemon.service.store.budget_bytes,
            "count": len(daemon.service.store.entries()),
        },
        "adapter_ids": names,
        "explorer_url": daemon.config.api.explorer_url,
        "history": list(history.samples) if history is not None else [],
    }


def _plain(obj: object) -> object:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    return obj


def build_app(daemon: NodeDaemon) -> web.Application:
    app = web.Application()
    history = StatusHistory(daemon)
    registry = metrics_registry(daemon)
    page = resources.files("node.static").joinpath("status.html").read_bytes()

    async def sample_history(app: web.Application):
        task = asyncio.create_task(history.run())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.cleanup_ctx.append(sample_history)

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8")

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(_: web.Request) -> web.Response:
        report = daemon.readiness.report
        body = report.to_dict()
        if not daemon.ready:
            body["reasons"] = {"starting": "the node is starting or stopping", **body["reasons"]}
        ready = daemon.ready and report.ready
        body["ready"] = ready
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=render(registry), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(daemon, history))

    app.router.add_get("/", index)
    app.router.add_get("/status.html", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    # the evidence (proof + token ids) of this node's results, as a trustless gateway serves raw blocks
    evidence = TrustlessGateway(daemon.evidence.store)
    app.router.add_get("/ipfs/{cid}", evidence._get)
    from node.completions import add_completion_routes

    add_completion_routes(app, daemon)
    return app


async def start_api(daemon: NodeDaemon, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(daemon), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
