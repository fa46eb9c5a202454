"""Chain-side faults against an in-process node on Anvil: a reorg that drops our claim and our result,
RPC endpoints that go down and come back, and a transaction stuck by underpricing."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

from aiohttp import ClientSession

from inference.models import LoadedModel, tiny_llama
from node.chain_steps import job_ids_of_key
from scripts.fault_injection import TcpProxy, all_paid, settlement, wait_until
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node


def _tx_records(config) -> list[dict]:
    import json
    import sqlite3

    conn = sqlite3.connect(config.db_path)
    try:
        return [json.loads(b) for (b,) in conn.execute("SELECT body FROM txs ORDER BY nonce")]
    finally:
        conn.close()


def _watcher_cursor(config) -> int:
    with sqlite3.connect(config.db_path) as conn:
        row = conn.execute("SELECT MAX(block) FROM watch_checkpoints").fetchone()
    return row[0] or -1


def _covering(records: list[dict], kind: str, job: int) -> dict:
    """The (batched) claim or result tx record whose key names `job` ("claims:3,4")."""
    return next(r for r in records if job in job_ids_of_key(r["key"]) and r["key"].startswith(kind))


async def test_reorg_that_drops_our_claim_and_result_is_repaired(
    tmp_path: Path, tiny: LoadedModel, caplog
) -> None:
    caplog.set_level(logging.INFO)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=7), tiny)
        s.register_node(tiny)
        market = s.contract("JobMarket")
        config = s.node_config()
        async with running_node(config, tiny_llama(0)):
            jobs = [s.submit(adapter_id, f"reorg prompt {i}", max_tokens=6) for i in range(2)]
            await wait_until(lambda: all_paid(s, jobs), 90, "both jobs paid")
            last = jobs[-1]
            claim_block = market.events.JobClaimed.get_logs(
                from_block=s.deployment.start_block, argument_filters={"jobId": last}
            )[-1]["blockNumber"]
            head = s.w3.eth.block_number
            depth = head - claim_block + 1
            # the scenario: the node has *seen* its claim and result confirmed (watcher cursor at the head)
            await wait_until(lambda: _watcher_cursor(config) >= head, 30, "the watcher to reach the head")
            s.w3.provider.make_request("anvil_reorg", [depth, []])  # replaced by empty blocks
            assert s.status(last) == 1  # OPEN again: claim and result are gone
            await wait_until(lambda: all_paid(s, jobs), 60, "the job paid again on the new chain")
            await asyncio.sleep(0.5)
        report = settlement(s, jobs)
        assert report["paid"] == jobs and not report["double_results"] and not report["double_claims"], report
        assert report["reverted_txs"] == 0, report
        messages = [r.getMessage() for r in caplog.records]
        assert any("chain reorganised" in m for m in messages)
        resent = [m for m in messages if m.startswith("recovery: reorg") and "re-sent" in m]
        records = _tx_records(s.node_config())
        claim, result = _covering(records, "claims", last), _covering(records, "results", last)
        assert resent and claim["key"] in resent[0] and result["key"] in resent[0], messages
        # the same signed transactions were re-sent (same nonce), not new ones
        assert len(claim["hashes"]) == 1 and claim["state"] == "confirmed"


async def test_rpc_outage_fails_over_and_recovers_without_crashing(tmp_path: Path, tiny: LoadedModel) -> None:
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=8), tiny)
        s.register_node(tiny)
        primary, backup = TcpProxy(s.anvil.port), TcpProxy(s.anvil.port)
        await primary.start()
        await backup.start()
        config = s.node_config(chain={"rpc_urls": [primary.url, backup.url], "rpc_timeout_s": 2.0})
        try:
            async with running_node(config, tiny_llama(0)) as url, ClientSession() as http:
                await primary.stop()  # the primary endpoint goes away: the backup serves
                first = s.submit(adapter_id, "failover prompt", max_tokens=6)
                await wait_until(lambda: all_paid(s, [first]), 60, "job paid through the backup RPC")

                await backup.stop()  # now no RPC at all
                second = s.submit(adapter_id, "outage prompt", max_tokens=6)
                for _ in range(10):  # the node stays up and answers /healthz during the outage
                    async with http.get(f"{url}/healthz") as r:
                        assert r.status == 200
                    await asyncio.sleep(0.3)
                assert not all_paid(s, [second])
                async with http.get(f"{url}/metrics") as r:
                    text = await r.text()
                errors = next(
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("openlora_rpc_errors_total")
                )
                assert errors > 0

                await primary.start()  # the primary comes back on the same address
                await wait_until(lambda: all_paid(s, [second]), 60, "job paid after the RPC came back")
        finally:
            await primary.stop()
            await backup.stop()
        report = settlement(s, [first, second])
        assert report["paid"] == [first, second] and report["reverted_txs"] == 0, report


async def test_underpriced_claim_is_bumped_with_the_same_nonce(
    tmp_path: Path, tiny: LoadedModel, caplog
) -> None:
    caplog.set_level(logging.INFO)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=9), tiny)
        s.register_node(tiny)
        config = s.node_config(chain={"bump_after_s": 1.0, "max_fee_gwei": 500.0})
        async with running_node(config, tiny_llama(0)):
            job = s.submit(adapter_id, "underpriced prompt", max_tokens=6)
            # the base fee jumps to 60 gwei: fees priced from the latest block (~1 gwei) are now too low
            s.w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(60 * 10**9)])
            await wait_until(lambda: all_paid(s, [job]), 90, "job paid after the fee bump")
        claim = _covering(_tx_records(config), "claims", job)
        assert claim["bumps"] >= 1 and len(claim["hashes"]) >= 2, claim
        assert claim["mined_hash"] == claim["hashes"][-1] and claim["max_fee"] >= 60 * 10**9
        report = settlement(s, [job])
        assert report["paid"] == [job] and report["calls"]["claimJob"] == 1, report
        assert any("bumped fees" in r.getMessage() and claim["key"] in r.getMessage() for r in caplog.records)


async def test_deep_reorg_in_blocks_the_lagging_watcher_never_saw_is_repaired(
    tmp_path: Path, tiny: LoadedModel, caplog, monkeypatch
) -> None:
    """Our claim and result are settled (tx manager: confirmed) while the event watcher lags behind;
    a reorg then replaces exactly those blocks. The watcher has nothing to compare, so the tx manager's
    re-check of settled txs must find the drop, and the same signed txs are re-sent and paid once."""
    from chain.watcher import EventWatcher

    caplog.set_level(logging.INFO)
    lag = {"stalled": False}
    watch = EventWatcher.next_batch

    async def lagging_next_batch(self):
        if lag["stalled"]:
            return None
        batch = await watch(self)
        if batch is not None and any(e.name == "JobSubmitted" for e in batch.events):
            lag["stalled"] = True  # the watcher saw the job, then falls behind the head
        return batch

    monkeypatch.setattr(EventWatcher, "next_batch", lagging_next_batch)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=10), tiny)
        s.register_node(tiny)
        market = s.contract("JobMarket")
        config = s.node_config(chain={"reorg_audit_every": 1})
        async with running_node(config, tiny_llama(0)):
            job = s.submit(adapter_id, "deep reorg prompt", max_tokens=6)
            await wait_until(lambda: all_paid(s, [job]), 90, "job paid")
            assert lag["stalled"] and _watcher_cursor(config) < s.w3.eth.block_number
            claim_block = market.events.JobClaimed.get_logs(
                from_block=s.deployment.start_block, argument_filters={"jobId": job}
            )[-1]["blockNumber"]
            assert claim_block > _watcher_cursor(config)  # the watcher never processed the claim block
            s.w3.provider.make_request("anvil_reorg", [s.w3.eth.block_number - claim_block + 1, []])
            assert s.status(job) == 1  # OPEN again
            await wait_until(lambda: all_paid(s, [job]), 60, "the job paid again on the new chain")
            lag["stalled"] = False  # the watcher catches up over the new chain without another repair
            await wait_until(lambda: _watcher_cursor(config) >= s.w3.eth.block_number, 30, "watcher at head")
        report = settlement(s, [job])
        assert report["paid"] == [job] and not report["double_results"] and not report["double_claims"], (
            report
        )
        messages = [r.getMessage() for r in caplog.records]
        assert not any("chain reorganised" in m for m in messages)  # the watcher did not see this reorg
        assert any("is no longer on the chain" in m for m in messages), messages
        records = _tx_records(config)
        for record in (_covering(records, "claims", job), _covering(records, "results", job)):
            assert len(record["hashes"]) == 1 and record["state"] == "confirmed", record
