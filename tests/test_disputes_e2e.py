"""Disputes end to end on Anvil (protocol v2 + verifiable results): an honest node and a node configured to
cheat (test-only switch: it posts an output other than the one its proof covers) serve jobs side by side;
two validator daemons re-check every result. The cheating result fails verification, one validator
disputes it with a bond and its evidence, the other checks it itself and votes fraud, the arbiter rules,
the dispute is settled: the cheater's claim stake is slashed and the submitter refunded in full. The honest
result verifies, is never disputed, and its payment matures after the challenge window."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account import Account

from chain.deployment import ProtocolParams
from chain.devnet import dev_private_key
from chain.protocol import JobStatus
from inference.ipfs.sources import GatewaySource
from inference.models import LoadedModel, tiny_llama
from node.validator import ValidatorDaemon
from tests.factories import make_peft_adapter
from tests.stack import PRICE, protocol_stack, running_node, send, wait_until

pytest.importorskip("toploc", reason="TOPLOC is built by `make setup`")


async def test_cheating_node_is_disputed_slashed_and_the_honest_one_paid(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    params = ProtocolParams()
    async with protocol_stack(tmp_path) as s:
        honest_ad, honest_pkg = s.publish(make_peft_adapter(tiny, tmp_path / "a1", rank=4, seed=41), tiny)
        cheat_ad, cheat_pkg = s.publish(make_peft_adapter(tiny, tmp_path / "a2", rank=4, seed=42), tiny)
        rogue = Account.from_key(dev_private_key(4))
        validators = [Account.from_key(dev_private_key(i)) for i in (5, 6)]
        registry = s.contract("AdapterRegistry")
        for v in validators:
            send(s.w3, s.deployer, registry.functions.setValidator(v.address, True))
        s.register_node(tiny)
        s.register_node(tiny, operator=rogue, name="rogue")
        nodes, market = s.contract("NodeRegistry"), s.contract("JobMarket")
        # each node serves one of the adapters, so each job has a known server
        honest_cfg = s.node_config(policy={"denied_cids": [cheat_pkg.cid]}, verify={"prove": "on"})
        rogue_cfg = s.node_config(
            operator=rogue,
            name="rogue",
            policy={"denied_cids": [honest_pkg.cid]},
            verify={"prove": "on", "test_cheat": "edit-output"},
        )
        async with (
            running_node(honest_cfg, tiny_llama(0)) as honest_url,
            running_node(rogue_cfg, tiny_llama(0)) as rogue_url,
        ):
            stop = asyncio.Event()
            daemons = [
                ValidatorDaemon(
                    s.w3,
                    s.deployment,
                    v,
                    tiny_llama(0),
                    [GatewaySource(u) for u in (s.gateway_url, honest_url, rogue_url)],
                    tmp_path / f"validator-{i}",
                    poll_s=0.3,
                )
                for i, v in enumerate(validators)
            ]
            tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
            try:
                good = s.submit(honest_ad, "an honest answer please", max_tokens=8)
                bad = s.submit(cheat_ad, "a dishonest answer please", max_tokens=8)
                await s.wait_result(good)
                await s.wait_result(bad)
                assert s.result_event(bad)["args"]["node"] == rogue.address
                rogue_stake = nodes.functions.getNode(rogue.address).call()[2]
                await wait_until(
                    lambda: s.status(bad) == JobStatus.REFUNDED, 90, "the fraud to be ruled and settled"
                )
                await wait_until(
                    lambda: all(d.stats.checked >= 2 for d in daemons), 60, "both results re-checked"
                )
            finally:
                stop.set()
                await asyncio.gather(*tasks)
                for d in daemons:
                    for src in d.sources:
                        await src.close()

        # the cheater: slashed its claim stake; the submitter: refunded the full price
        stake = max(params.min_claim_stake_wei, PRICE * params.claim_stake_bps // 10_000)
        assert nodes.functions.getNode(rogue.address).call()[2] == rogue_stake - stake
        (settled,) = market.events.DisputeSettled.get_logs(from_block=s.deployment.start_block)
        assert settled["args"]["fraud"] and settled["args"]["refund"] == PRICE
        assert market.functions.balanceOf(s.submitter.address).call() == PRICE
        assert sum(d.stats.disputed for d in daemons) == 1 and sum(d.stats.votes for d in daemons) == 1
        challenger = market.functions.getDispute(bad).call()[0]
        assert challenger in {v.address for v in validators}
        assert (
            market.functions.balanceOf(challenger).call()
            == params.dispute_bond_wei + settled["args"]["reward"]
        )
        # the honest node: verified by both, never disputed, paid once the window passed
        assert s.status(good) == JobStatus.RESULTED
        assert not market.events.DisputeOpened.get_logs(
            from_block=s.deployment.start_block, argument_filters={"jobId": good}
        )
        held = market.functions.heldOf(s.operator.address).call()
        assert held > 0
        s.w3.provider.make_request("evm_increaseTime", [2 * params.challenge_window_s + 1])
        s.w3.provider.make_request("evm_mine", [])
        assert market.functions.balanceOf(s.operator.address).call() == held
        assert market.functions.heldOf(rogue.address).call() == 0  # nothing of the cheat's pay is left
