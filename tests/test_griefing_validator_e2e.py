"""A validator that disputes honest results to grief nodes, end to end on Anvil: an honest node serves a job;
a lying validator daemon (its re-check always "fails") disputes the result with a bond; an honest validator
daemon re-checks the result itself and votes no fraud; the arbiter rules, the dispute is settled. The liar
loses its bond to the node, cannot vote on its own dispute, and the node keeps its stake and its pay."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from eth_account import Account

from chain.deployment import ProtocolParams
from chain.devnet import dev_private_key
from chain.protocol import JobStatus
from chain.verify import ResultVerdict
from inference.ipfs.sources import GatewaySource
from inference.models import LoadedModel, tiny_llama
from node.validator import ValidatorDaemon
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node, send, wait_until

pytest.importorskip("toploc", reason="TOPLOC is built by `make setup`")


class LyingValidator(ValidatorDaemon):
    """The attacker: runs the real re-check, then reports every result as failed (so it disputes honest
    results and would vote fraud on any dispute)."""

    async def _verify(self, job_id: int) -> ResultVerdict:
        verdict = await super()._verify(job_id)
        return dataclasses.replace(
            verdict, check=dataclasses.replace(verdict.check, passed=False, reason="griefing: claims fraud")
        )


async def test_a_griefing_validator_loses_its_bond_to_the_honest_node(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    params = ProtocolParams()
    async with protocol_stack(tmp_path) as s:
        adapter, _pkg = s.publish(make_peft_adapter(tiny, tmp_path / "a1", rank=4, seed=51), tiny)
        liar, honest = Account.from_key(dev_private_key(5)), Account.from_key(dev_private_key(6))
        registry = s.contract("AdapterRegistry")
        for v in (liar, honest):
            send(s.w3, s.deployer, registry.functions.setValidator(v.address, True))
        s.register_node(tiny)
        nodes, market = s.contract("NodeRegistry"), s.contract("JobMarket")
        arbiter = s.contract("ValidatorArbiter")
        stake_before = nodes.functions.getNode(s.operator.address).call()[2]
        liar_balance = s.w3.eth.get_balance(liar.address)
        async with running_node(s.node_config(verify={"prove": "on"}), tiny_llama(0)) as node_url:
            sources = [GatewaySource(u) for u in (s.gateway_url, node_url)]
            stop = asyncio.Event()
            # the liar starts first and checks everything; the honest validator only votes on disputes
            lying = LyingValidator(
                s.w3, s.deployment, liar, tiny_llama(0), sources, tmp_path / "liar", poll_s=0.3
            )
            fair = ValidatorDaemon(
                s.w3, s.deployment, honest, tiny_llama(0), sources, tmp_path / "fair", poll_s=0.3
            )
            tasks = [asyncio.create_task(d.run(stop)) for d in (lying, fair)]
            try:
                job = s.submit(adapter, "an honest answer please", max_tokens=8)
                await s.wait_result(job)
                await wait_until(
                    lambda: lying.stats.disputed >= 1, 60, "the liar to dispute the honest result"
                )
                await wait_until(
                    lambda: s.status(job) == JobStatus.FINAL, 90, "the dispute to be ruled and settled"
                )
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                for src in sources:
                    await src.close()

        # the ruling: no fraud, by the honest validator's vote; the liar could not vote on its own dispute
        (opened,) = market.events.DisputeOpened.get_logs(from_block=s.deployment.start_block)
        assert opened["args"]["challenger"] == liar.address and opened["args"]["jobId"] == job
        votes = arbiter.events.Voted.get_logs(from_block=s.deployment.start_block)
        assert [(v["args"]["validator"], v["args"]["fraud"]) for v in votes] == [(honest.address, False)]
        assert not arbiter.functions.hasVoted(job, liar.address).call()
        (settled,) = market.events.DisputeSettled.get_logs(from_block=s.deployment.start_block)
        assert (
            not settled["args"]["fraud"]
            and settled["args"]["refund"] == 0
            and settled["args"]["slashed"] == 0
        )
        # the node: stake untouched, paid its share plus the liar's bond at once; no refund to the submitter
        assert nodes.functions.getNode(s.operator.address).call()[2] == stake_before
        result = s.result_event(job)["args"]
        assert (
            market.functions.balanceOf(s.operator.address).call()
            == result["nodeAmount"] + params.dispute_bond_wei
        )
        assert market.functions.balanceOf(s.submitter.address).call() == 0
        # the liar: out its bond (and gas), with nothing to withdraw
        assert market.functions.balanceOf(liar.address).call() == 0
        assert s.w3.eth.get_balance(liar.address) <= liar_balance - params.dispute_bond_wei
