"""A silent claimant, end to end on protocol v2 (the "30-day squat"): a rogue node claims a job in the block
it was submitted in and never answers. After the job's service window anyone reclaims it: the rogue is
slashed, the submitter gets at most the bounded compensation, the job reopens, and our node (which had
recorded it as lost) serves it and is paid. A second squatted job runs past its deadline: expired, escrow
refunded, the compensation paid once, never more."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eth_account import Account
from eth_utils import keccak
from web3.logs import DISCARD

from chain.deployment import ProtocolParams
from chain.devnet import dev_private_key
from chain.protocol import JobStatus
from chain.terms import AdapterTerm, Terms
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import PRICE, STAKE, protocol_stack, running_node, send, wait_job_state

WINDOW = 10  # seconds: the deployment's minimum service window


def _squat(s, rogue, adapter_id: int, prompt: bytes, ttl: int) -> Terms:
    """Submit a job (service window WINDOW) and have `rogue` claim it in the same block, with the terms it
    can predict: the next block's timestamp is pinned first."""
    market = s.contract("JobMarket")
    registry = s.contract("AdapterRegistry")
    a = registry.functions.getAdapter(adapter_id).call()
    s.w3.provider.make_request("evm_setAutomine", [False])
    now = s.w3.eth.get_block("latest")["timestamp"] + 1
    s.w3.provider.make_request("evm_setNextBlockTimestamp", [now])
    terms = Terms(
        job_id=market.functions.jobCount().call() + 1,
        submitter=s.submitter.address,
        price=PRICE,
        submitted_at=now,
        deadline=now + ttl,
        service_window=WINDOW,
        max_tokens=8,
        protocol_fee_bps=market.functions.protocolFeeBps().call(),
        base_model=bytes(a[2]),
        input_hash=keccak(prompt),
        adapters=(AdapterTerm(adapter_id, 10_000, a[5], bytes(a[1])),),
    )
    request = ([(adapter_id, 10_000, a[5])], 8, now + ttl, WINDOW)
    submit = market.functions.submitRequest(request, prompt, "", b"\0" * 32).build_transaction(
        {
            "from": s.submitter.address,
            "value": PRICE,
            "nonce": s.w3.eth.get_transaction_count(s.submitter.address),
        }
    )
    claim = market.functions.claimJob(terms.claim_key()).build_transaction(
        {"from": rogue.address, "nonce": s.w3.eth.get_transaction_count(rogue.address), "gas": 400_000}
    )
    s.w3.eth.send_raw_transaction(s.submitter.sign_transaction(submit).raw_transaction)
    s.w3.eth.send_raw_transaction(rogue.sign_transaction(claim).raw_transaction)
    s.w3.provider.make_request("evm_mine", [])
    s.w3.provider.make_request("evm_setAutomine", [True])
    assert s.terms(terms.job_id) == terms
    return terms


def _advance(s, seconds: int) -> None:
    s.w3.provider.make_request("evm_increaseTime", [seconds])
    s.w3.provider.make_request("evm_mine", [])


async def test_silent_claimant_is_reclaimed_slashed_and_the_job_served_by_another_node(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=5)
    params = ProtocolParams()
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        rogue = Account.from_key(dev_private_key(4))
        stranger = Account.from_key(dev_private_key(5))
        nodes = s.contract("NodeRegistry")
        base = nodes.functions.getNode(s.operator.address).call()[1]
        send(
            s.w3,
            rogue,
            nodes.functions.register(rogue.address, base, "12D3KooWRogueNodeThatNeverAnswers"),
            value=STAKE,
        )
        market = s.contract("JobMarket")
        config = s.node_config()
        stake = max(params.min_claim_stake_wei, PRICE * params.claim_stake_bps // 10_000)
        compensation = min(stake, PRICE * params.compensation_bps // 10_000)
        async with running_node(config, tiny_llama(0)):
            book = JobBook(connect(config.db_path))
            squatted = await asyncio.to_thread(_squat, s, rogue, adapter_id, b"squatted job", 300)
            assert s.status(squatted.job_id) == JobStatus.CLAIMED
            await wait_job_state(book, squatted.job_id, {JobState.LOST}, timeout=20)

            # inside the service window nobody can take the job from its claimant
            reclaim = market.functions.reclaim(squatted.as_abi())
            try:
                reclaim.call({"from": stranger.address})
                raise AssertionError("reclaim inside the service window must revert")
            except Exception as e:
                assert "0x" in str(e)  # ServiceWindowOpen
            rogue_before = nodes.functions.getNode(rogue.address).call()[2]
            await asyncio.to_thread(_advance, s, WINDOW + 1)
            receipt = send(s.w3, stranger, reclaim)
            (event,) = market.events.JobReclaimed().process_receipt(receipt, errors=DISCARD)
            assert event["args"]["reopened"] and event["args"]["slashed"] == stake
            assert event["args"]["compensation"] == compensation
            # reopened: our node competes again, serves it and is paid
            await s.wait_result(squatted.job_id, timeout=60)
            assert (
                await wait_job_state(book, squatted.job_id, {JobState.PAID})
            ).node_amount == squatted.node_amount

            # a second squat runs past its deadline: expired, escrow back, compensation not paid twice
            late = await asyncio.to_thread(_squat, s, rogue, adapter_id, b"second squat", 40)
            await wait_job_state(book, late.job_id, {JobState.LOST}, timeout=20)
            await asyncio.to_thread(_advance, s, 41)
            receipt = send(s.w3, stranger, market.functions.expire(late.as_abi()))
            (expired,) = market.events.JobExpired().process_receipt(receipt, errors=DISCARD)
            assert expired["args"]["refund"] == PRICE and expired["args"]["slashed"] == stake
            await wait_job_state(book, late.job_id, {JobState.EXPIRED}, timeout=20)

        assert nodes.functions.getNode(rogue.address).call()[2] == rogue_before - 2 * stake
        # the submitter: both compensations (one per job, each <= 10 % of its price) plus the late escrow
        assert market.functions.balanceOf(s.submitter.address).call() == PRICE + 2 * compensation
        assert market.functions.balanceOf(stranger.address).call() == 0  # reclaiming earns nothing
        assert s.status(squatted.job_id) == JobStatus.RESULTED and s.status(late.job_id) == JobStatus.EXPIRED
