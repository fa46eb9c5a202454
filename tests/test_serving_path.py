"""The node's serving path at the engine's speed: one validation per adapter, warm jobs keep their slot,
a poison adapter costs one fetch, and a restart re-hashes the disk tier once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import ClientSession

from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import TamperingGateway, protocol_stack, running_node


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def _metrics(url: str) -> str:
    async with ClientSession() as http, http.get(f"{url}/metrics") as r:
        return await r.text()


async def _all_final(book: JobBook, ids: list[int], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((j := book.get(i)) is not None and j.terminal for i in ids):
            return
        await asyncio.sleep(0.2)
    raise AssertionError({i: book.get(i).state if book.get(i) else None for i in ids})


async def test_20_jobs_over_2_adapters_validate_and_swap_twice(tmp_path: Path, tiny: LoadedModel) -> None:
    dirs = [make_peft_adapter(tiny, tmp_path / f"a{i}", rank=4, seed=20 + i) for i in range(2)]
    async with protocol_stack(tmp_path) as s:
        ids = [s.publish(d, tiny)[0] for d in dirs]
        s.register_node(tiny)
        config = s.node_config(engine={"max_slots": 4, "max_batch": 4})
        book = JobBook(connect(config.db_path))
        async with running_node(config, tiny_llama(0)) as url:
            jobs = [
                await asyncio.to_thread(s.submit, ids[i % 2], f"prompt {i}", max_tokens=6) for i in range(20)
            ]
            await _all_final(book, jobs)
            metrics = await _metrics(url)
        assert all(book.get(j).state == JobState.PAID for j in jobs)
        assert _metric(metrics, "openlora_adapter_validations_total") == 2
        assert _metric(metrics, "openlora_engine_swaps_in_total") == 2
        assert _metric(metrics, "openlora_adapter_fetches_total") == 2

        # after a restart the first job of an adapter validates it again, from the disk tier (re-hashed), once
        async with running_node(config, tiny_llama(0)) as url:
            more = [await asyncio.to_thread(s.submit, ids[0], f"again {i}", max_tokens=6) for i in range(4)]
            await _all_final(book, more)
            metrics = await _metrics(url)
        assert all(book.get(j).state == JobState.PAID for j in more)
        assert _metric(metrics, "openlora_adapter_validations_total") == 1
        assert _metric(metrics, "openlora_adapter_rehashes_total") == 1
        assert _metric(metrics, "openlora_adapter_fetches_total") == 0  # from disk, not the network


async def test_poison_adapter_costs_one_fetch_cycle(tmp_path: Path, tiny: LoadedModel) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "poison", rank=4, seed=33)
    async with protocol_stack(tmp_path) as s:
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        liar = TamperingGateway(s.gateway_url, tamper=set(pkg.dag.blocks))  # every block's bytes wrong
        url_liar = await liar.start()
        config = s.node_config(gateways=[url_liar])
        book = JobBook(connect(config.db_path))
        try:
            async with running_node(config, tiny_llama(0)) as url:
                first = await asyncio.to_thread(s.submit, adapter_id, "poison 0", max_tokens=4)
                await _all_final(book, [first])
                served_after_first = liar.served_tampered
                jobs = [
                    await asyncio.to_thread(s.submit, adapter_id, f"poison {i}", max_tokens=4)
                    for i in range(1, 10)
                ]
                await _all_final(book, jobs)
                metrics = await _metrics(url)
        finally:
            await liar.stop()
        assert all(book.get(j).state == JobState.SKIPPED for j in [first, *jobs])
        assert (
            served_after_first >= 1 and liar.served_tampered == served_after_first
        )  # no fetch after the first
        assert _metric(metrics, "openlora_adapter_fetches_total") == 1
        assert _metric(metrics, "openlora_adapter_refused_from_memory_total") == 9
