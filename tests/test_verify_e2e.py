"""Verifiable results end to end on Anvil: the node publishes a TOPLOC proof with every result and signs its
hash; anyone re-checks a result from public data only (the chain, the gateway, the node's /ipfs): an honest
result passes, an edited output (a test-only cheat switch) fails with its first failing chunk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chain.client import ProtocolClient
from chain.signing import ZERO32
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node, wait_job_state

pytest.importorskip("toploc", reason="TOPLOC is built by `make setup`")


async def test_honest_result_verifies_and_an_edited_output_fails(
    tmp_path: Path, tiny: LoadedModel, capsys, monkeypatch
) -> None:
    from node.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=31)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        client = ProtocolClient(s.w3, s.deployment)
        config = s.node_config(verify={"prove": "on"})  # a TOPLOC that does not load fails the start
        async with running_node(config, tiny_llama(0)) as url:
            honest = s.submit(adapter_id, "prove this answer", max_tokens=10)
            await s.wait_result(honest)
        job = JobBook(connect(config.db_path)).get(honest)
        assert job.proof_hash and job.proof_hash != ZERO32
        assert client.result(honest).proof_hash == job.proof_hash  # signed and posted with the result
        from chain.sdk import OpenLoRA

        sdk = OpenLoRA(s.w3, s.deployment)
        # the node is stopped: its evidence is gone from its API; the stack's gateway does not have it
        gone = await asyncio.to_thread(
            sdk.verify_result, honest, gateways=[s.gateway_url], model="tiny-llama"
        )
        assert not gone.passed and "no evidence" in gone.check.reason

        cheat = s.node_config(verify={"prove": "on", "test_cheat": "edit-output"})
        async with running_node(cheat, tiny_llama(0)) as url:
            ok = await asyncio.to_thread(sdk.verify_result, honest, gateways=[s.gateway_url, url])
            assert ok.passed, ok.check.reason
            edited = s.submit(adapter_id, "prove this answer too", max_tokens=10)
            await s.wait_result(edited)
            await wait_job_state(JobBook(connect(cheat.db_path)), edited, {JobState.PAID})
            bad = await asyncio.to_thread(sdk.verify_result, edited, gateways=[s.gateway_url, url])
            # the same checks from the command line: exit 0 for a pass, 1 for a failure, with the chunk
            chain = ["--rpc", s.anvil.url, "--deployment", str(tmp_path / "deployment.json")]
            gateways = ["--gateway", s.gateway_url, "--gateway", url]
            codes = []
            for job_id in (honest, edited):
                codes.append(await asyncio.to_thread(main, ["job", "verify", str(job_id), *gateways, *chain]))
            out = capsys.readouterr().out
        assert codes == [0, 1], out
        assert f"job {honest}: pass" in out and f"job {edited}: FAIL (first failing chunk 0)" in out
        assert not bad.passed and "edited output" in bad.check.reason and bad.check.first_failing_chunk == 0
        assert ok.check.verify_s > 0 and ok.evidence_cid.startswith("bafk")
