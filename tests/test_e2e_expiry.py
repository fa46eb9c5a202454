"""Expiry end to end: a node that claims and never answers is slashed, the submitter refunded, and our
node (which saw the rival's claim) records the job as lost, then expired."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eth_account import Account
from web3 import Web3

from chain.deployment import ProtocolParams
from chain.devnet import dev_private_key
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import PRICE, STAKE, protocol_stack, running_node, send


async def test_silent_claimant_is_slashed_and_submitter_refunded(tmp_path: Path, tiny: LoadedModel) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=5)
    params = ProtocolParams()
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        rogue = Account.from_key(dev_private_key(4))
        registry = s.contract("NodeRegistry")
        send(
            s.w3,
            rogue,
            registry.functions.register(
                rogue.address,
                registry.functions.getNode(s.operator.address).call()[1],
                "12D3KooWRogueNodeThatNeverAnswers",
            ),
            value=STAKE,
        )
        market = s.contract("JobMarket")
        config = s.node_config()
        async with running_node(config, tiny_llama(0)):
            # the rogue node claims in the same block as the submission, before ours can
            await asyncio.to_thread(s.w3.provider.make_request, "evm_setAutomine", [False])
            job_id = market.functions.jobCount().call() + 1
            deadline = s.w3.eth.get_block("latest")["timestamp"] + 120
            submit = market.functions.submitJob(adapter_id, b"never answered", 8, deadline).build_transaction(
                {
                    "from": s.submitter.address,
                    "value": PRICE,
                    "nonce": s.w3.eth.get_transaction_count(s.submitter.address),
                }
            )
            claim = market.functions.claimJob(job_id).build_transaction(
                {
                    "from": rogue.address,
                    "nonce": s.w3.eth.get_transaction_count(rogue.address),
                    "gas": 300_000,
                }
            )
            s.w3.eth.send_raw_transaction(s.submitter.sign_transaction(submit).raw_transaction)
            s.w3.eth.send_raw_transaction(rogue.sign_transaction(claim).raw_transaction)
            await asyncio.to_thread(s.w3.provider.make_request, "evm_mine", [])
            await asyncio.to_thread(s.w3.provider.make_request, "evm_setAutomine", [True])
            assert market.functions.getJob(job_id).call()[1] == rogue.address

            book = JobBook(connect(config.db_path))
            for _ in range(100):
                job = book.get(job_id)
                if job is not None and job.state == JobState.LOST:
                    break
                await asyncio.sleep(0.1)
            assert book.get(job_id).state == JobState.LOST

            # the deadline passes with no answer; anyone may expire the job
            rogue_stake_before = registry.functions.getNode(rogue.address).call()[2]
            await asyncio.to_thread(s.w3.provider.make_request, "evm_increaseTime", [121])
            await asyncio.to_thread(s.w3.provider.make_request, "evm_mine", [])
            receipt = send(s.w3, s.submitter, market.functions.expire(job_id))
            (expired,) = market.events.JobExpired().process_receipt(receipt)
            for _ in range(100):
                if book.get(job_id).state == JobState.EXPIRED:
                    break
                await asyncio.sleep(0.1)
            assert book.get(job_id).state == JobState.EXPIRED

        slash_to_submitter = params.claim_stake_wei * params.slash_to_submitter_bps // 10_000
        assert expired["args"]["slashed"] == params.claim_stake_wei
        assert expired["args"]["refund"] == PRICE + slash_to_submitter
        assert market.functions.balanceOf(s.submitter.address).call() == PRICE + slash_to_submitter
        assert (
            market.functions.balanceOf(s.deployer.address).call()
            == params.claim_stake_wei - slash_to_submitter
        )
        assert (
            registry.functions.getNode(rogue.address).call()[2] == rogue_stake_before - params.claim_stake_wei
        )
        assert s.result_event(job_id) is None
        assert (
            Web3.to_wei(0, "ether") == market.functions.balanceOf(s.operator.address).call()
        )  # ours never claimed
