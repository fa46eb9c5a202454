"""The Python SDK (chain/sdk.py), sync and async, against Anvil with a real node serving the jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from eth_account import Account
from web3 import HTTPProvider, Web3

from chain.deployment import ProtocolParams, deploy
from chain.devnet import Anvil, dev_private_key
from chain.sdk import AsyncOpenLoRA, ContractCallError, JobStatus, OpenLoRA, UnknownJobError
from inference.models import LoadedModel, base_model_id, tiny_llama
from inference.reference import peft_generate
from tests.factories import make_peft_adapter
from tests.stack import ADAPTER_FEE, protocol_stack, running_node, send


async def test_sync_and_async_sdk_submit_wait_verify_list_earnings(tmp_path: Path, tiny: LoadedModel) -> None:
    async with protocol_stack(tmp_path) as s:
        adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=81)
        adapter_id, pkg = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        deployment = tmp_path / "deployment.json"
        client = OpenLoRA.connect(s.anvil.url, deployment, dev_private_key(3))
        aclient = await AsyncOpenLoRA.connect(s.anvil.url, deployment, dev_private_key(3))
        assert client.address == aclient.address == s.submitter.address
        assert client.min_price(adapter_id) > ADAPTER_FEE
        with pytest.raises(UnknownJobError, match="does not exist"):
            client.job(999)
        with pytest.raises(ContractCallError, match="UnknownAdapter"):
            client.min_price(77)

        async with running_node(s.node_config(), tiny_llama(0)):
            sync_job = await asyncio.to_thread(client.submit, adapter_id, "sdk sync prompt", max_tokens=8)
            async_jobs = await asyncio.gather(
                *(aclient.submit(adapter_id, f"sdk async prompt {i}", max_tokens=8) for i in range(2))
            )
            verified = await asyncio.to_thread(client.wait_verified, sync_job.job_id, timeout=90)
            averified = await asyncio.gather(
                *(aclient.wait_verified(j.job_id, timeout=90) for j in async_jobs)
            )

        assert verified.signature.valid and verified.signature.recovered == s.operator.address
        assert verified.text == peft_generate(tiny, adapter_dir, "sdk sync prompt", 8).text
        for job, v in zip(async_jobs, averified, strict=True):
            assert v.signature.valid and v.result.job_id == job.job_id and v.result.node == s.operator.address
        info = client.job(sync_job.job_id)
        assert info.status == JobStatus.RESULTED and info.node == s.operator.address
        assert info.price_wei == sync_job.price_wei and info.deadline == sync_job.deadline

        listed = await aclient.jobs()
        assert [j.job_id for j in listed] == sorted([sync_job.job_id, *(j.job_id for j in async_jobs)])
        adapters = client.list_adapters(s.publisher.address)
        assert [(a.adapter_id, a.cid, a.rank) for a in adapters] == [(adapter_id, pkg.cid, pkg.rank)]

        publisher = client.earnings(s.publisher.address)
        assert publisher.adapter_wei == {adapter_id: 3 * ADAPTER_FEE} and publisher.adapter_jobs == {
            adapter_id: 3
        }
        node = await aclient.earnings(s.operator.address)
        held = s.contract("JobMarket").functions.heldOf(s.operator.address).call()
        assert node.jobs_served == 3 and node.node_wei == held > 0 and node.withdrawable_wei == 0

        # the node re-keys its signer: the old results no longer verify against the registered key
        other = Account.create()
        send(
            s.w3,
            s.operator,
            s.contract("NodeRegistry").functions.update(other.address, base_model_id(tiny.name), "peer"),
        )
        check = client.verify_signature(verified.result)
        assert not check.valid and check.registered == other.address


def test_connect_refuses_a_deployment_for_another_chain(tmp_path: Path) -> None:
    with Anvil() as first, Anvil(chain_id=4242) as second:
        deployment = deploy(
            Web3(HTTPProvider(first.url)), Account.from_key(dev_private_key(0)), ProtocolParams()
        )
        deployment.save(tmp_path / "deployment.json")
        with pytest.raises(ContractCallError, match="is chain 4242"):
            OpenLoRA.connect(second.url, tmp_path / "deployment.json")
