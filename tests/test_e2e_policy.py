"""Node policy end to end: only attested adapters are served; an adapter the engine cannot hold is
refused by validation; refused jobs are left unclaimed for other nodes and the node goes on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from chain.protocol import JobStatus
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node, send


async def test_policy_and_limits_leave_jobs_for_others(tmp_path: Path, tiny: LoadedModel, caplog) -> None:
    caplog.set_level(logging.INFO)
    attested_dir = make_peft_adapter(tiny, tmp_path / "attested", rank=4, seed=31)
    unvetted_dir = make_peft_adapter(tiny, tmp_path / "unvetted", rank=4, seed=32)
    too_big_dir = make_peft_adapter(tiny, tmp_path / "too-big", rank=16, seed=33)
    async with protocol_stack(tmp_path) as s:
        attested, _ = s.publish(attested_dir, tiny)
        unvetted, _ = s.publish(unvetted_dir, tiny)
        too_big, _ = s.publish(too_big_dir, tiny)
        registry = s.contract("AdapterRegistry")
        validator = s.deployer  # the registry owner appoints itself a validator here
        send(s.w3, validator, registry.functions.setValidator(validator.address, True))
        for adapter_id in (attested, too_big):
            send(s.w3, validator, registry.functions.attest(adapter_id))
        s.register_node(tiny)
        config = s.node_config(policy={"min_attestations": 1}, engine={"max_rank": 8})
        async with running_node(config, tiny_llama(0)):
            skipped_job = s.submit(unvetted, "who vetted you?")
            rejected_job = s.submit(too_big, "too big to hold")
            served_job = s.submit(attested, "vetted and small")
            await s.wait_result(served_job)
            book = JobBook(connect(config.db_path))
            for _ in range(100):
                if all(
                    book.get(j) and book.get(j).state == JobState.SKIPPED for j in (skipped_job, rejected_job)
                ):
                    break
                await asyncio.sleep(0.1)

        assert book.get(skipped_job).state == JobState.SKIPPED
        assert any("attestation" in (note or "") for *_, note in book.history(skipped_job))
        assert book.get(rejected_job).state == JobState.SKIPPED
        assert any("rank" in (note or "") for *_, note in book.history(rejected_job))
        for job_id in (skipped_job, rejected_job):
            assert s.status(job_id) == JobStatus.OPEN  # never claimed
            assert s.result_event(job_id) is None
        assert s.status(served_job) == JobStatus.RESULTED
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert f"job {skipped_job} not claimed (policy)" in logged
