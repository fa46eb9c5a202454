"""The watcher and the node behind real providers' limits: `eth_getLogs` capped by range and result count
(with the messages providers send), 10 % of calls answered 429 or timed out, and a second endpoint 20
blocks behind. Over 300 jobs spread across 3,000+ blocks every job is processed once, the cursor never
moves back, and nothing is rescanned from the deployment block."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import ClientSession

from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.rpc_proxy import ProviderLimits, RpcProxy
from tests.stack import PRICE, protocol_stack, running_node

JOBS = 300
PAID_EVERY = 10  # one job in ten pays enough to be served; the rest sit below [policy].min_price_wei


def _metric(text: str, name: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def test_300_jobs_over_3000_blocks_behind_provider_limits(tmp_path: Path, tiny: LoadedModel) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=8)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        provider = RpcProxy(
            s.anvil.url,
            ProviderLimits(max_log_blocks=500, max_log_results=40, fail_rate=0.10, timeout_s=0.8),
            seed=1,
        )
        lagging = RpcProxy(s.anvil.url, ProviderLimits(lag_blocks=20))
        urls = [await provider.start(), await lagging.start()]
        config = s.node_config(
            chain={
                "rpc_urls": urls,
                "rpc_timeout_s": 0.5,
                "max_log_range": 2000,
                "max_lag_blocks": 5,
                "poll_interval_s": 0.2,
            },
            policy={"min_price_wei": PRICE},
            admission={"max_committed_jobs": 64},
        )
        book = JobBook(connect(config.db_path))
        start_block = s.deployment.start_block

        async def submit(jobs: range) -> None:
            for i in jobs:
                price = PRICE if i % PAID_EVERY == 0 else PRICE - 1
                await asyncio.to_thread(s.submit, adapter_id, f"job {i}", max_tokens=4, price=price, ttl=3600)
                await asyncio.to_thread(s.w3.provider.make_request, "anvil_mine", [10])

        await submit(range(JOBS // 2))  # a backlog of 1,500 blocks: the first read meets the limits
        try:
            async with running_node(config, tiny_llama(0)) as url:
                await submit(range(JOBS // 2, JOBS))
                assert s.w3.eth.block_number - start_block >= 3000
                deadline = time.monotonic() + 240
                while time.monotonic() < deadline:
                    counts = book.counts()
                    if counts.get("paid", 0) + counts.get("skipped", 0) >= JOBS:
                        break
                    await asyncio.sleep(0.5)
                async with ClientSession() as http, http.get(f"{url}/metrics") as r:
                    metrics = await r.text()
        finally:
            await provider.stop()
            await lagging.stop()

        counts = book.counts()
        odd = [
            (j.job_id, j.state.value, j.error)
            for j in book.recent(JOBS + 10)
            if j.state.value not in ("paid", "skipped")
        ]
        seen = len(book.recent(JOBS + 10))
        assert counts.get("paid", 0) == JOBS // PAID_EVERY, (odd, counts, seen, provider.get_logs_ranges[-5:])
        assert counts.get("skipped", 0) == JOBS - JOBS // PAID_EVERY, counts
        ids = [j.job_id for j in book.recent(JOBS + 10)]
        assert sorted(ids) == list(range(1, JOBS + 1))  # each job recorded once, none missing
        for job in book.recent(JOBS):
            if job.state == JobState.SKIPPED:
                assert job.error.startswith("price: ")
        market = s.contract("JobMarket")
        results = market.events.ResultSubmitted.get_logs(from_block=start_block)
        assert len(results) == len({e["args"]["jobId"] for e in results}) == JOBS // PAID_EVERY  # paid once

        # the cursor only moved forward: every range starts at or after the previous one, and nothing
        # after the first read starts back at the deployment block
        starts = [a for a, _ in provider.get_logs_ranges]
        assert starts == sorted(starts)
        assert starts.count(start_block) <= 1 or all(
            b < start_block + 500 for a, b in provider.get_logs_ranges if a == start_block
        )
        assert _metric(metrics, "openlora_watcher_rewinds_total") == 0
        assert _metric(metrics, "openlora_log_range_shrinks_total") > 0  # limits were met and adapted to
        assert provider.refused > 0
        assert max(b - a + 1 for a, b in provider.get_logs_ranges) <= 500
        # the lagging endpoint was taken out of rotation: it never answered a log query
        assert lagging.get_logs_ranges == []
