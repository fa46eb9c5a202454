"""The operator's HTTP surface (aiohttp): the status page (/), /healthz, /readyz, /metrics (Prometheus
text), /status (JSON), and when enabled the local OpenAI-style /v1/completions (node/completions.py)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from importlib import resources
from typing import TYPE_CHECKING

from aiohttp import web

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
        "ready": daemon.ready,
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


def prometheus_text(daemon: NodeDaemon) -> str:
    m = daemon.metrics
    lines = [
        "# HELP openlora_jobs Jobs known to this node by state.",
        "# TYPE openlora_jobs gauge",
    ]
    lines += [f'openlora_jobs{{state="{s}"}} {n}' for s, n in daemon.jobs.counts().items()]
    mined, gas_wei = daemon.tx.store.totals(daemon.operator.address)
    stats = _plain(daemon.service.engine.stats())
    lines += [
        "# TYPE openlora_jobs_paid_total counter",
        f"openlora_jobs_paid_total {m.jobs_paid}",
        "# TYPE openlora_earned_wei_total counter",
        f"openlora_earned_wei_total {m.earned_wei}",
        "# TYPE openlora_tokens_generated_total counter",
        f"openlora_tokens_generated_total {m.tokens_generated}",
        "# TYPE openlora_adapter_rejections_total counter",
        f"openlora_adapter_rejections_total {m.adapter_rejections}",
        "# TYPE openlora_rpc_errors_total counter",
        f"openlora_rpc_errors_total {m.rpc_errors}",
        "# TYPE openlora_txs_mined_total counter",
        f"openlora_txs_mined_total {mined}",
        "# TYPE openlora_gas_spent_wei_total counter",
        f"openlora_gas_spent_wei_total {gas_wei}",
    ]
    if m.claim_latency_s:
        lat = sorted(m.claim_latency_s)
        lines += [
            "# TYPE openlora_claim_latency_seconds summary",
            f'openlora_claim_latency_seconds{{quantile="0.5"}} {lat[len(lat) // 2]:.3f}',
            f"openlora_claim_latency_seconds_count {len(lat)}",
            f"openlora_claim_latency_seconds_sum {sum(lat):.3f}",
        ]
    for key in ("swaps_in", "evictions", "tokens_generated"):
        if isinstance(stats, dict) and isinstance(stats.get(key), int | float):
            lines += [f"# TYPE openlora_engine_{key} counter", f"openlora_engine_{key} {stats[key]}"]
    for key in ("slot_hit_rate", "host_hit_rate", "tokens_per_s", "queue_depth"):
        if isinstance(stats, dict) and isinstance(stats.get(key), int | float):
            lines += [f"# TYPE openlora_engine_{key} gauge", f"openlora_engine_{key} {stats[key]}"]
    # reliability: recoveries and admission (node/daemon.py NodeMetrics, node/admission.py)
    lines += [
        "# TYPE openlora_jobs_committed gauge",
        f"openlora_jobs_committed {len(daemon.committed())}",
        "# TYPE openlora_reorgs_total counter",
        f"openlora_reorgs_total {m.reorgs}",
        "# TYPE openlora_txs_resent_after_reorg_total counter",
        f"openlora_txs_resent_after_reorg_total {m.txs_resent_after_reorg}",
        "# TYPE openlora_jobs_resumed_total counter",
        f"openlora_jobs_resumed_total {m.jobs_resumed}",
        "# TYPE openlora_admission_refusals_total counter",
    ]
    refused = {
        **daemon.admission.refused,
        "capacity": daemon.admission.refused.get("capacity", 0) + m.jobs_skipped_capacity,
    }
    lines += [f'openlora_admission_refusals_total{{reason="{k}"}} {v}' for k, v in sorted(refused.items())]
    return "\n".join(lines) + "\n"


def build_app(daemon: NodeDaemon) -> web.Application:
    app = web.Application()
    history = StatusHistory(daemon)
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
        return web.json_response({"ready": daemon.ready}, status=200 if daemon.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=prometheus_text(daemon), content_type="text/plain", charset="utf-8")

    async def status(_: web.Request) -> web.Response:
        return web.json_response(status_snapshot(daemon, history))

    app.router.add_get("/", index)
    app.router.add_get("/status.html", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    from node.completions import add_completion_routes

    add_completion_routes(app, daemon)
    return app


async def start_api(daemon: NodeDaemon, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(daemon), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
