"""Two nodes with the peer network on: the cold node fetches the adapter from the warm one over bitswap
(no gateway configured) and gives it a head start, so the warm node wins the job."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eth_account import Account

from chain.devnet import dev_private_key, free_port
from inference.models import LoadedModel, tiny_llama
from inference.store import AdapterStore
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node


async def _state(config, job_id: int, want: JobState, timeout: float = 30.0) -> JobState | None:
    book = JobBook(connect(config.db_path))
    for _ in range(int(timeout / 0.1)):
        job = book.get(job_id)
        if job is not None and job.state == want:
            return job.state
        await asyncio.sleep(0.1)
    job = book.get(job_id)
    return job.state if job else None


async def test_cold_node_fetches_from_the_warm_peer_and_lets_it_claim(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=41)
    async with protocol_stack(tmp_path) as s:
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        cold_operator = Account.from_key(dev_private_key(5))
        warm_peer_id = s.register_node(tiny, name="warm")
        s.register_node(tiny, operator=cold_operator, name="cold")
        warm_port = free_port()
        p2p = {"enabled": True, "announce_interval_s": 0.5, "warm_backoff_s": 4.0}
        warm_cfg = s.node_config(name="warm", p2p={**p2p, "listen": f"/ip4/127.0.0.1/tcp/{warm_port}"})
        cold_cfg = s.node_config(
            gateways=[],  # the cold node can only get the adapter from a peer
            operator=cold_operator,
            name="cold",
            p2p={
                **p2p,
                "listen": "/ip4/127.0.0.1/tcp/0",
                "bootstrap": [f"/ip4/127.0.0.1/tcp/{warm_port}/p2p/{warm_peer_id}"],
            },
        )
        async with running_node(warm_cfg, tiny_llama(0)):
            first = s.submit(adapter_id, "make me warm")
            await s.wait_result(first)  # only the warm node is up: it serves and now holds the adapter
            async with running_node(cold_cfg, tiny_llama(0)):
                await asyncio.sleep(2.0)  # a few announcements reach the cold node
                # the submission is mined alone, so both nodes see the open job before anyone's claim can
                # land (else the cold node may read submission and claim in one batch: no decision to see)
                await asyncio.to_thread(s.w3.provider.make_request, "evm_setAutomine", [False])
                market = s.contract("JobMarket")
                second = market.functions.jobCount().call() + 1
                deadline = s.w3.eth.get_block("latest")["timestamp"] + 600
                s.send_submit(adapter_id, b"who gets this one?", 12, deadline)
                await asyncio.to_thread(s.w3.provider.make_request, "evm_mine", [])
                cold_seen = JobBook(connect(cold_cfg.db_path))
                for _ in range(100):
                    if any("head start" in (note or "") for *_, note in cold_seen.history(second)):
                        break
                    await asyncio.sleep(0.1)
                await asyncio.to_thread(s.w3.provider.make_request, "evm_setAutomine", [True])
                await asyncio.to_thread(s.w3.provider.make_request, "evm_mine", [])
                result = await s.wait_result(second)
                assert result["args"]["node"] == s.operator.address  # the warm node won
                assert await _state(cold_cfg, second, JobState.LOST) == JobState.LOST
        cold_book = JobBook(connect(cold_cfg.db_path))
        notes = " ".join(note or "" for *_, note in cold_book.history(second))
        assert "head start" in notes, notes
        cold_store = AdapterStore(
            cold_cfg.cache_dir, budget_bytes=1 << 30, sources=[], max_adapter_bytes=1 << 29
        )
        assert cold_store.contains(pkg.cid)  # fetched over bitswap, verified, cached
