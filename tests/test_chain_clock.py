"""Deadlines are decided on the chain's clock: with the host 120 s ahead of or behind the chain, the node
claims no job it cannot finish and never gives up on one the market still accepts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from chain.protocol import JobStatus
from inference.models import LoadedModel, tiny_llama
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node


async def _final(book: JobBook, job_id: int, timeout: float = 60.0) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = book.get(job_id)
        if job is not None and job.terminal:
            return job.state
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} still {book.get(job_id)}")


@pytest.mark.parametrize("host_ahead_s", [120, -120])
async def test_host_clock_skew_changes_no_decision(
    tmp_path: Path, tiny: LoadedModel, host_ahead_s: int
) -> None:
    chain_ts = int(time.time()) - host_ahead_s  # the chain's clock, offset from the host's
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=12)
    async with protocol_stack(tmp_path, extra_args=["--timestamp", str(chain_ts)]) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        skew = s.w3.eth.get_block("latest")["timestamp"] - time.time()
        assert abs(skew + host_ahead_s) < 5  # the chain really is off the host clock
        config = s.node_config()
        book = JobBook(connect(config.db_path))
        async with running_node(config, tiny_llama(0)):
            # 60 s of chain time: finishable, and with the host ahead a host-clock node would think it
            # already past its deadline and give up
            servable = s.submit(adapter_id, "sixty seconds", max_tokens=8, ttl=60)
            # 2 s of chain time: not finishable (claim + result round trip alone is estimated at 4 s);
            # with the host behind a host-clock node would think it has 122 s and claim it
            hopeless = s.submit(adapter_id, "two seconds", max_tokens=8, ttl=2)
            assert await _final(book, servable) == JobState.PAID
            state = await _final(book, hopeless)
        assert state == JobState.SKIPPED
        assert book.get(hopeless).error.startswith("deadline: ")
        assert s.status(hopeless) == JobStatus.OPEN  # never claimed
