"""The spine, end to end: Anvil, the contracts, an adapter published over the trustless-gateway
protocol, a job submitted by an outside client, served by the node, signed and paid."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import ClientSession
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

from chain.deployment import ProtocolParams
from chain.protocol import JobStatus
from inference.models import LoadedModel, tiny_llama
from inference.reference import peft_generate
from inference.store import AdapterStore
from tests.factories import make_peft_adapter
from tests.stack import PRICE, TamperingGateway, protocol_stack, running_node, send

PROMPT = "Write one line about swapping adapters."


def _recover_batch_signer(stack, items: list[tuple[int, bytes, bytes, bytes]], signature: bytes) -> str:
    """Independent of the node's code: eth-account's EIP-712 (full message form) over the contract's domain,
    for a ResultBatch of (jobId, termsHash, outputHash, proofHash)."""
    typed = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "ResultBatch": [{"name": "results", "type": "Result[]"}],
            "Result": [
                {"name": "jobId", "type": "uint256"},
                {"name": "termsHash", "type": "bytes32"},
                {"name": "outputHash", "type": "bytes32"},
                {"name": "proofHash", "type": "bytes32"},
            ],
        },
        "primaryType": "ResultBatch",
        "domain": {
            "name": "OpenLoRA",
            "version": "2",
            "chainId": stack.w3.eth.chain_id,
            "verifyingContract": stack.deployment.job_market,
        },
        "message": {
            "results": [{"jobId": j, "termsHash": t, "outputHash": o, "proofHash": p} for j, t, o, p in items]
        },
    }
    return Account.recover_message(encode_typed_data(full_message=typed), signature=signature)


async def test_job_is_served_signed_and_paid(tmp_path: Path, tiny: LoadedModel) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=11)
    async with protocol_stack(tmp_path, forge_script=True) as s:  # deployed as an operator would
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        market = s.contract("JobMarket")
        submitter_before = s.w3.eth.get_balance(s.submitter.address)
        async with running_node(s.node_config(), tiny_llama(0)) as url, ClientSession() as http:
            job_id = s.submit(adapter_id, PROMPT, max_tokens=12)
            event = await s.wait_result(job_id)
            async with http.get(f"{url}/status") as r:
                status = await r.json()
            async with http.get(f"{url}/metrics") as r:
                metrics = await r.text()
        assert any(j["job_id"] == job_id for j in status["recent_jobs"])
        assert "openlora_jobs{" in metrics and "openlora_tokens_generated_total" in metrics

        args = event["args"]
        # v2 keeps the output in the result transaction's calldata only; the event carries its hash
        tx = s.w3.eth.get_transaction(event["transactionHash"])
        fn, params = market.decode_function_input(tx["input"])
        assert fn.fn_name == "submitResults"
        (item,) = [i for i in params["items"] if i["head"] >> 192 == job_id]
        output = bytes(item["output"])
        assert args["node"] == s.operator.address
        assert bytes(args["outputHash"]) == keccak(output)
        terms = s.terms(job_id)
        assert terms.input_hash == keccak(PROMPT.encode()) and terms.adapter_hash == pkg.content_hash

        # the batch signature in the result transaction recovers to the node's registered signing key
        signed = [
            (
                i["head"] >> 192,
                s.terms(i["head"] >> 192).hash(),
                keccak(bytes(i["output"])),
                bytes(i["proofHash"]),
            )
            for i in params["items"]
        ]
        assert _recover_batch_signer(s, signed, bytes(params["signature"])) == s.operator.address

        # the output is what a direct local run of the same adapter and prompt gives (PEFT, greedy)
        expected = await asyncio.to_thread(peft_generate, tiny, adapter_dir, PROMPT, 12)
        assert output.decode() == expected.text
        base_only = await asyncio.to_thread(peft_generate, tiny, None, PROMPT, 12)
        assert expected.text != base_only.text  # the adapter really changed the answer

        # balances moved by exactly the fee split: the node's and the adapter's shares are held for the
        # challenge window, then withdrawable without any further transaction; the protocol fee at once
        params_ = ProtocolParams()
        protocol_cut = PRICE * params_.protocol_fee_bps // 10_000
        adapter_cut = 2 * 10**15  # tests.stack.ADAPTER_FEE
        node_cut = PRICE - protocol_cut - adapter_cut
        assert args["nodeAmount"] == node_cut == terms.node_amount
        assert market.functions.heldOf(s.operator.address).call() == node_cut
        assert market.functions.balanceOf(s.operator.address).call() == 0
        assert market.functions.adapterFees(adapter_id).call() == [0, adapter_cut]
        assert market.functions.balanceOf(s.deployer.address).call() == protocol_cut
        s.w3.provider.make_request("evm_increaseTime", [2 * params_.challenge_window_s + 1])
        s.w3.provider.make_request("evm_mine", [])
        assert market.functions.balanceOf(s.operator.address).call() == node_cut
        assert market.functions.adapterFees(adapter_id).call() == [adapter_cut, 0]
        send(s.w3, s.publisher, market.functions.withdrawAdapterFees(adapter_id))
        assert market.functions.balanceOf(s.publisher.address).call() == adapter_cut
        spent = submitter_before - s.w3.eth.get_balance(s.submitter.address)
        assert PRICE <= spent < PRICE + 10**16  # the price plus its own gas, nothing more


async def test_tampered_adapter_is_refused_and_the_node_serves_the_next_job(
    tmp_path: Path, tiny: LoadedModel, caplog
) -> None:
    good_dir = make_peft_adapter(tiny, tmp_path / "good", rank=4, seed=21)
    bad_dir = make_peft_adapter(tiny, tmp_path / "bad", rank=8, seed=22)
    caplog.set_level(logging.INFO)
    async with protocol_stack(tmp_path) as s:
        good_id, _ = s.publish(good_dir, tiny)
        bad_id, bad_pkg = s.publish(bad_dir, tiny)
        s.register_node(tiny)
        biggest = max(bad_pkg.dag.blocks, key=lambda c: len(bad_pkg.dag.blocks[c]))
        liar = TamperingGateway(s.gateway_url, {biggest})
        liar_url = await liar.start()
        config = s.node_config(gateways=[liar_url])
        try:
            async with running_node(config, tiny_llama(0)):
                bad_job = s.submit(bad_id, PROMPT)
                good_job = s.submit(good_id, PROMPT)
                await s.wait_result(good_job)
                await asyncio.sleep(1.0)
        finally:
            await liar.stop()
        assert liar.served_tampered >= 1
        assert s.result_event(bad_job) is None  # never paid
        refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any(f"job {bad_job}" in m and "refused" in m and bad_pkg.cid in m for m in refusals), refusals
        store = AdapterStore(config.cache_dir, budget_bytes=1 << 30, sources=[], max_adapter_bytes=1 << 30)
        assert not store.contains(bad_pkg.cid)  # nothing unverified entered the cache
        assert s.status(bad_job) == JobStatus.OPEN  # never claimed: left for other nodes, not slashed
