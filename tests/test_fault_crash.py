"""SIGKILL at every job state: a real node process on Anvil dies right after persisting each state in turn
and is restarted; in the end every job is paid exactly once and nothing was claimed or answered twice."""

from __future__ import annotations

import signal
from pathlib import Path

from inference.models import LoadedModel
from node.jobs import JobBook, JobState, connect
from scripts.fault_injection import (
    CRASH_STATES,
    NodeProcess,
    all_paid,
    crash_at_every_state,
    settlement,
    wait_until,
    write_node_toml,
)
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack


async def test_sigkill_at_every_state_then_each_job_is_paid_exactly_once(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=5), tiny)
        s.register_node(tiny)
        config, port = write_node_toml(s, tmp_path / "node.toml")
        node = NodeProcess(config, port, tmp_path / "node.log")
        job_ids = [s.submit(adapter_id, f"crash prompt {i}", max_tokens=6) for i in range(3)]
        try:
            rounds = await crash_at_every_state(s, node, job_ids)
            # every start died by the hook (137, as SIGKILL) right after persisting its state
            assert [r["state"] for r in rounds] == [st.value for st in CRASH_STATES]
            assert all(r["exit_code"] == 137 for r in rounds), rounds

            node.start()
            await node.wait_ready()
            await wait_until(lambda: all_paid(s, job_ids), 120, "all jobs paid after the crashes")
            node.signal(signal.SIGTERM)
            assert await node.wait_exit(60) == 0  # SIGTERM drains and exits cleanly
        finally:
            node.kill()

        report = settlement(s, job_ids)
        assert report["paid"] == job_ids, report
        assert not report["double_claims"] and not report["double_results"], report
        assert report["reverted_txs"] == 0, report  # no claim or result was ever sent a second time
        assert report["calls"] == {"claimJob": 3, "submitResult": 3}, report

        # the database saw each job through every state, and the log shows each resumption
        book = JobBook(connect(tmp_path / "node" / "node.sqlite"))
        for job_id in job_ids:
            states = [to for _, _, to, _ in book.history(job_id)]
            assert states[0] == "seen" and states[-1] == "paid", states
        first = [to for _, _, to, _ in book.history(job_ids[0])]
        assert [st.value for st in CRASH_STATES] == [
            x for x in first if x in {st.value for st in CRASH_STATES}
        ]
        resumed = [
            e["msg"] for e in node.log_lines() if e.get("msg", "").startswith("recovery: resuming job")
        ]
        assert len(resumed) >= len(CRASH_STATES) - 1, resumed
        assert book.get(job_ids[0]).state == JobState.PAID
