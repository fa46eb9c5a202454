"""scripts/grafana/openlora-node.json against a live node: the real `prometheus` binary scrapes a real node
(tiny model, Anvil, the deployed contracts) that has been paid for jobs, has refused one, has failed one,
has had a broadcast refused and is not ready for lack of gas money; then every panel target of the
dashboard, with Grafana's variables substituted, is asked of Prometheus's HTTP API and must return series.

The conditions are real, not mocked: the refused job asks for more tokens than [engine].max_tokens_cap,
the failed one is a claimed job resumed from the node's database whose prompt the engine refuses (as in
tests/test_node_safety.py), and the operator's balance is set to 0 with Anvil's `anvil_setBalance`, then
given back, after which the node claims and is paid for the job it could not pay gas for."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession
from prometheus_client.parser import text_string_to_metric_families

from chain.devnet import free_port
from inference.models import LoadedModel, tiny_llama
from node.jobs import Job, JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import PRICE, Stack, protocol_stack, running_node, wait_job_state

DASHBOARD = Path(__file__).resolve().parent.parent / "scripts" / "grafana" / "openlora-node.json"
PROMPT = "Say something about dashboards."
# Grafana's built-in intervals as a dashboard over the last few minutes would set them
GRAFANA_INTERVALS = {"$__rate_interval": "30s", "$__interval": "30s", "$__range": "5m"}
METRIC = re.compile(r"\bopenlora_[a-z0-9_]+\b")


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("the `prometheus` binary is not installed (Debian: apt-get install prometheus, as root)")
    pytest.fail(
        "the `prometheus` binary is missing: run scripts/setup.sh as root (it installs Debian's prometheus)"
    )


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query target of every panel, rows included."""
    dash = json.loads(DASHBOARD.read_text())
    out: list[tuple[str, str, str]] = []

    def walk(panels: list[dict]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["refId"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return out


def substitute(expr: str, instance: str) -> str:
    """Grafana's interpolation of a multi-value variable in a regex matcher: the value, regex-escaped."""
    for name, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(name, value)
    value = re.escape(instance).replace("\\", "\\\\")  # inside a PromQL double-quoted string
    expr = expr.replace("${instance}", value).replace("$instance", value)
    assert "$" not in expr, f"a variable the test does not know is left in: {expr}"
    return expr


@contextlib.contextmanager
def prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """The real Prometheus on a free loopback port, scraping `target` (host:port) every second."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: openlora-node\n    metrics_path: /metrics\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


async def query(http: ClientSession, prom: str, expr: str) -> list[dict]:
    async with http.get(f"{prom}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "success", (expr, body)
    assert body["data"]["resultType"] == "vector", (expr, body)
    return body["data"]["result"]


async def wait_series(http: ClientSession, prom: str, expr: str, timeout: float = 30.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            result = await query(http, prom, expr)
            if result:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"Prometheus has no series for {expr} after {timeout}s")
        await asyncio.sleep(0.3)


def seed_resumed_job(s: Stack, book: JobBook, adapter_id: int, adapter_hash: bytes, cid: str) -> int:
    """A claimed job in the node's database whose prompt the engine refuses: fails at once when resumed."""
    book.add(
        Job(
            job_id=777,
            state=JobState.CLAIMED,
            submitter=s.submitter.address,
            adapter_id=adapter_id,
            adapter_hash=adapter_hash,
            input=("far too long " * 400).encode(),
            input_cid="",
            input_hash=b"\0" * 32,
            max_tokens=8,
            deadline=int(time.time()) + 3600,
            price=PRICE,
            seen_block=1,
            adapter_cid=cid,
        )
    )
    return 777


def set_balance(s: Stack, wei: int) -> None:
    s.w3.provider.make_request("anvil_setBalance", [s.operator.address, hex(wei)])


async def test_every_dashboard_panel_returns_series_from_a_live_node(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    targets = dashboard_targets()
    assert len(targets) >= 20
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=5)
    async with protocol_stack(tmp_path) as s:
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        config = s.node_config(health={"check_interval_s": 0.5})
        book = JobBook(connect(config.db_path))
        failed_job = seed_resumed_job(s, book, adapter_id, pkg.content_hash, pkg.cid)
        instance = f"{config.api.host}:{config.api.port}"
        with prometheus(tmp_path, instance) as prom:
            async with running_node(config, tiny_llama(0)) as url, ClientSession() as http:
                paid = [s.submit(adapter_id, PROMPT, max_tokens=8) for _ in range(2)]
                refused = s.submit(adapter_id, PROMPT, max_tokens=config.engine.max_tokens_cap + 1)
                for job_id in paid:
                    await s.wait_result(job_id, timeout=60)
                await wait_job_state(book, refused, {JobState.SKIPPED})
                await wait_job_state(book, failed_job, {JobState.FAILED})

                # no gas money: not ready (balance), and the claim of the next job is refused by the RPC
                set_balance(s, 0)
                starved = s.submit(adapter_id, PROMPT, max_tokens=8)
                await wait_series(http, prom, 'openlora_not_ready{cause="balance"} == 1')
                await wait_series(http, prom, 'openlora_tx_broadcast_errors_total{kind="insufficient_funds"}')
                await wait_series(http, prom, "openlora_claim_latency_seconds_count")
                await asyncio.sleep(2.5)  # a few more scrapes, so that every rate() has two samples

                # the dashboard's node variable: label_values(openlora_ready, instance)
                async with http.get(
                    f"{prom}/api/v1/label/instance/values", params={"match[]": "openlora_ready"}
                ) as r:
                    assert (await r.json())["data"] == [instance]

                empty = []
                results: dict[str, list[dict]] = {}
                for title, ref, expr in targets:
                    result = await query(http, prom, substitute(expr, instance))
                    results[f"{title}/{ref}"] = result
                    if not result:
                        empty.append(f"{title} [{ref}]: {expr}")
                assert not empty, "panel targets without series:\n" + "\n".join(empty)

                async with http.get(f"{url}/metrics") as r:
                    exposition = await r.text()

                # gas money back: the node sends its claim again and is paid
                set_balance(s, 10**21)
                await s.wait_result(starved, timeout=60)

        # the series are the node's, not a query's fallback
        def labels(key: str, label: str) -> set[str]:
            return {x["metric"].get(label, "") for x in results[key]}

        assert float(results["Paid jobs (total)/A"][0]["value"][1]) == 2
        assert float(results["Ready/A"][0]["value"][1]) == 0
        assert "balance" in labels("Readiness/B", "cause")
        assert "input-rejected" in labels("Slashes, expired and failed jobs/C", "reason")
        assert "input" in labels("Admission refusals by reason/A", "reason")
        assert "insufficient_funds" in labels("Transactions/F", "kind")
        assert labels("RPC endpoint health/A", "endpoint") == {s.anvil.url}

        # every metric the dashboard names is exported by the node, and every exported one is on it
        families = {f.name: {x.name for x in f.samples} for f in text_string_to_metric_families(exposition)}
        samples = set().union(*families.values())
        named = {m for _, _, expr in targets for m in METRIC.findall(expr)}
        assert named - samples == set(), "on the dashboard but not in the node's /metrics"
        unused = {f for f, names in families.items() if not names & named}
        assert unused == set(), "exported by the node but on no panel"
