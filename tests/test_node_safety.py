"""The adversarial job corpus against the real daemon on Anvil: for every job the node either does not
claim it (and says why) or is paid; no job of the corpus ends with the node slashed.

Before these defenses, the long non-UTF-8 prompt was claimed and retried until the deadline (slashed),
and a job at `minPrice` was served for a 2-wei share at ~140k gas."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from web3 import Web3

from chain.protocol import JobStatus
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import PRICE, protocol_stack, running_node, send, wait_job_state

GWEI = 10**9


def _rpc(s, method: str, *params):
    return s.w3.provider.make_request(method, list(params))


async def _wait_pending(s, predicate, timeout: float = 30.0) -> dict:
    """The first pending (mempool) transaction that satisfies `predicate`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        block = await asyncio.to_thread(s.w3.eth.get_block, "pending", True)
        for tx in block["transactions"]:
            if predicate(tx):
                return tx
        await asyncio.sleep(0.05)
    raise AssertionError("transaction never reached the pool")


def _submit_raw(s, adapter_id: int, data: bytes, max_tokens: int, price: int, ttl: int = 600) -> int:
    market = s.contract("JobMarket")
    deadline = s.w3.eth.get_block("latest")["timestamp"] + ttl
    receipt = send(
        s.w3,
        s.submitter,
        market.functions.submitJob(adapter_id, s.max_fee(adapter_id), data, max_tokens, deadline),
        price,
    )
    (event,) = market.events.JobSubmitted().process_receipt(receipt)
    return event["args"]["jobId"]


def _claims_by(s, node: str) -> set[int]:
    events = s.contract("JobMarket").events.JobClaimed.get_logs(from_block=s.deployment.start_block)
    return {e["args"]["jobId"] for e in events if e["args"]["node"] == node}


async def test_adversarial_corpus_never_gets_the_node_slashed(
    tmp_path: Path, tiny: LoadedModel, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="openlora")
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=3)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        market = s.contract("JobMarket")
        registry = s.contract("AdapterRegistry")
        config = s.node_config(
            engine={"max_slots": 4, "max_batch": 4, "max_tokens_cap": 100_000},
            chain={"confirmations": 1, "poll_interval_s": 0.2, "max_fee_gwei": 5.0, "bump_after_s": 1.0},
            health={"check_interval_s": 0.3},
        )
        book = JobBook(connect(config.db_path))
        async with running_node(config, tiny_llama(0)):
            corpus: dict[str, int] = {}
            # 16,000 bytes that are not UTF-8 (the report's prompt): refused before a claim
            corpus["non-utf8"] = _submit_raw(s, adapter_id, bytes([0xFF, 0xFE, 0x80]) * 5333, 16, PRICE)
            # UTF-8 text far beyond the model's 512 positions
            corpus["too-long"] = _submit_raw(s, adapter_id, ("lorem ipsum " * 1300).encode(), 16, PRICE)
            # a prompt that fits, with max_tokens that does not
            corpus["max-tokens"] = _submit_raw(s, adapter_id, b"short prompt", 505, PRICE)
            # an output that cannot fit the market's 16 KiB inline limit in the worst case
            corpus["output"] = _submit_raw(s, adapter_id, b"short prompt", 6000, PRICE)
            # price at the market's minimum: the node's share is a few wei against ~140k gas
            corpus["min-price"] = _submit_raw(
                s, adapter_id, b"cheap", 8, market.functions.minPrice(adapter_id).call()
            )
            # a servable, paying job: the control
            corpus["honest"] = _submit_raw(s, adapter_id, b"hello there", 8, PRICE)

            # the publisher raises its fee in front of a submission signed at the old fee: protocol v2
            # makes the submitter state the fee it accepts, so the submission reverts instead of landing
            # with the node's share eaten
            await asyncio.to_thread(_rpc, s, "evm_setAutomine", False)
            deadline = s.w3.eth.get_block("latest")["timestamp"] + 600
            job_id = market.functions.jobCount().call() + 1
            fee_now = registry.functions.getAdapter(adapter_id).call()[5]
            submit = market.functions.submitJob(
                adapter_id, fee_now, b"front-run me", 8, deadline
            ).build_transaction(
                {
                    "from": s.submitter.address,
                    "value": PRICE,
                    "gas": 500_000,
                    "nonce": s.w3.eth.get_transaction_count(s.submitter.address),
                    "maxPriorityFeePerGas": 1,
                    "maxFeePerGas": 50 * GWEI,
                }
            )
            greedy = PRICE - PRICE // 100 - 3  # would leave the node 3 wei
            raise_fee = registry.functions.setFee(adapter_id, greedy).build_transaction(
                {
                    "from": s.publisher.address,
                    "gas": 200_000,
                    "maxPriorityFeePerGas": 10 * GWEI,
                    "maxFeePerGas": 50 * GWEI,
                    "nonce": s.w3.eth.get_transaction_count(s.publisher.address),
                }
            )
            s.w3.eth.send_raw_transaction(s.publisher.sign_transaction(raise_fee).raw_transaction)
            front_run = s.w3.eth.send_raw_transaction(s.submitter.sign_transaction(submit).raw_transaction)
            await asyncio.to_thread(_rpc, s, "evm_mine")
            await asyncio.to_thread(_rpc, s, "evm_setAutomine", True)
            assert s.w3.eth.get_transaction_receipt(front_run)["status"] == 0  # AdapterFeeAboveMax
            assert market.functions.jobCount().call() == job_id - 1  # no job at the raised fee exists
            send(s.w3, s.publisher, registry.functions.setFee(adapter_id, fee_now))

            refused = {k: v for k, v in corpus.items() if k != "honest"}
            for name, jid in refused.items():
                job = await wait_job_state(book, jid, {JobState.SKIPPED})
                assert job.error, name
            honest = await wait_job_state(book, corpus["honest"], {JobState.PAID})
            assert honest.node_amount > 0
            reasons = {name: book.get(jid).error.split(":")[0] for name, jid in refused.items()}
            assert reasons == {
                "non-utf8": "input",
                "too-long": "input",
                "max-tokens": "input",
                "output": "output",
                "min-price": "unprofitable",
            }
            logged = caplog.text
            for jid in refused.values():
                assert f"job {jid} not claimed" in logged

            # a base-fee spike above the node's cap while its result is pending
            await asyncio.to_thread(_rpc, s, "evm_setAutomine", False)
            s.send_submit(adapter_id, b"spike", 8, deadline)
            await asyncio.to_thread(_rpc, s, "evm_mine")
            spike_id = market.functions.jobCount().call()
            selector_claim = market.encode_abi("claimJobs", args=[[]])[:10]
            await _wait_pending(s, lambda tx: tx["input"].to_0x_hex().startswith(selector_claim))
            await asyncio.to_thread(_rpc, s, "evm_mine")  # the claim is mined
            result_sel = market.encode_abi("submitResults", args=[[], b""])[:10]
            await _wait_pending(s, lambda tx: tx["input"].to_0x_hex().startswith(result_sel))
            await asyncio.to_thread(_rpc, s, "anvil_setNextBlockBaseFeePerGas", hex(60 * GWEI))
            await asyncio.to_thread(_rpc, s, "evm_mine")
            # while fees are above the cap, a new job is not claimed (a transient refusal) ...
            s.send_submit(
                adapter_id,
                b"during the spike",
                8,
                deadline,
                maxFeePerGas=200 * GWEI,
                maxPriorityFeePerGas=GWEI,
            )
            await asyncio.to_thread(_rpc, s, "evm_mine")
            late_id = market.functions.jobCount().call()
            job = await wait_job_state(book, late_id, {JobState.SKIPPED})
            assert job.error.startswith("fees: ")
            for _ in range(8):
                await asyncio.to_thread(_rpc, s, "evm_mine")
                await asyncio.sleep(0.2)
            assert s.result_event(spike_id) is None  # unminable above the cap
            assert s.w3.eth.get_block("latest")["baseFeePerGas"] > 5 * GWEI
            await asyncio.to_thread(_rpc, s, "evm_setAutomine", True)
            await asyncio.to_thread(_rpc, s, "evm_setIntervalMining", 1)
            paid = await wait_job_state(
                book, spike_id, {JobState.PAID}, timeout=90
            )  # fees fall: result mined
            assert paid.node_amount > 0
            # ... and once fees are back under the cap it is decided again, claimed and paid
            await wait_job_state(book, late_id, {JobState.PAID}, timeout=60)
            await asyncio.to_thread(_rpc, s, "evm_setIntervalMining", 0)

        ours = _claims_by(s, s.operator.address)
        assert ours == {corpus["honest"], spike_id, late_id}  # nothing refused was ever claimed
        for jid in ours:
            assert s.status(jid) == JobStatus.RESULTED  # answered and paid, never slashed
        assert Web3.to_wei(0, "ether") < market.functions.heldOf(s.operator.address).call()


async def test_engine_refusal_after_a_claim_is_terminal_at_once(
    tmp_path: Path, tiny: LoadedModel, caplog
) -> None:
    """Admission makes it unreachable; should a claimed job still be refused by the engine (here: resumed
    from a database written by a node that admitted it), it fails at once with an ERROR line and a metric,
    instead of being retried "in state running" until the deadline."""
    from aiohttp import ClientSession

    from node.jobs import Job

    caplog.set_level(logging.INFO, logger="openlora")
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=4)
    async with protocol_stack(tmp_path) as s:
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        config = s.node_config()
        book = JobBook(connect(config.db_path))
        long_prompt = ("far too long " * 400).encode()
        book.add(
            Job(
                job_id=777,
                state=JobState.CLAIMED,
                submitter=s.submitter.address,
                adapter_id=adapter_id,
                adapter_hash=pkg.content_hash,
                input=long_prompt,
                input_cid="",
                input_hash=b"\0" * 32,
                max_tokens=8,
                deadline=int(time.time()) + 3600,
                price=PRICE,
                seen_block=1,
                adapter_cid=pkg.cid,
            )
        )
        started = time.monotonic()
        async with running_node(config, tiny_llama(0)) as url:
            job = await wait_job_state(book, 777, {JobState.FAILED}, timeout=30)
            took = time.monotonic() - started
            async with ClientSession() as http, http.get(f"{url}/metrics") as r:
                metrics = await r.text()
        assert took < 20  # at once, not after minutes of retries
        assert "exceeds the model's 512 positions" in job.error
        states = [to for _, _, to, _ in book.history(777)]
        assert states.count("running") == 1  # one attempt
        assert 'openlora_jobs_failed_total{reason="input-rejected"} 1.0' in metrics
        assert "job 777 FAILED (input-rejected)" in caplog.text
        assert any(r.levelno == logging.ERROR and "job 777" in r.getMessage() for r in caplog.records)
