from pathlib import Path

import pytest

from node.jobs import TERMINAL, TRANSITIONS, IllegalTransitionError, Job, JobBook, JobState, connect


def _job(job_id: int = 1) -> Job:
    return Job(
        job_id=job_id,
        state=JobState.SEEN,
        submitter="0xabc",
        adapter_id=1,
        adapter_hash=b"\x01" * 32,
        input=b"hi",
        input_cid="",
        input_hash=b"\x02" * 32,
        max_tokens=8,
        deadline=2**40,
        price=10,
        seen_block=5,
    )


def test_happy_path_persists_across_reopen(tmp_path: Path) -> None:
    db = tmp_path / "n.sqlite"
    book = JobBook(connect(db))
    assert book.add(_job())
    assert not book.add(_job())  # re-delivered event
    for state in (JobState.FETCHING, JobState.CLAIMING, JobState.CLAIMED, JobState.RUNNING):
        book.transition(1, state)
    book.transition(1, JobState.POSTING, output=b"out", signature=b"\x03" * 65)
    reopened = JobBook(connect(db))
    job = reopened.get(1)
    assert job.state == JobState.POSTING and job.output == b"out" and job.signature == b"\x03" * 65
    assert [h[2] for h in reopened.history(1)] == [
        "seen",
        "fetching",
        "claiming",
        "claimed",
        "running",
        "posting",
    ]
    assert [j.job_id for j in reopened.active()] == [1]


def test_illegal_transitions_refused(tmp_path: Path) -> None:
    book = JobBook(connect(tmp_path / "n.sqlite"))
    book.add(_job())
    with pytest.raises(IllegalTransitionError):
        book.transition(1, JobState.POSTING)  # never post without claiming
    book.transition(1, JobState.EXPIRED)
    with pytest.raises(IllegalTransitionError):
        book.transition(1, JobState.CLAIMING)
    assert book.get(1).state == JobState.EXPIRED


def test_every_state_has_a_row_and_no_terminal_state_runs_inference_again() -> None:
    assert set(TRANSITIONS) == set(JobState)
    for state in TERMINAL:
        assert JobState.RUNNING not in TRANSITIONS[state]
        assert JobState.CLAIMING not in TRANSITIONS[state]
    assert TRANSITIONS[JobState.PAID] == {JobState.POSTING}  # only a reorg that dropped the result


def test_crash_hook_dies_only_after_the_state_is_committed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    db = tmp_path / "jobs.sqlite"
    book = JobBook(connect(db))
    book.add(_job(5))
    script = (
        "import sys; from pathlib import Path; from node.jobs import JobBook, JobState, connect;"
        f"b = JobBook(connect(Path({str(db)!r}))); b.transition(5, JobState.FETCHING);"
        "b.transition(5, JobState.CLAIMING); print('not reached')"
    )
    env = {**os.environ, "OPENLORA_TEST_CRASH_AT": "claiming"}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 137 and "not reached" not in proc.stdout
    assert JobBook(connect(db)).get(5).state == JobState.CLAIMING  # durable before the process died


def test_backlog_query_finds_capacity_skips_still_worth_trying(tmp_path: Path) -> None:
    book = JobBook(connect(tmp_path / "jobs.sqlite"))
    for job_id, deadline in ((1, 100), (2, 2**40), (3, 2**40)):
        job = _job(job_id)
        job.deadline = deadline
        book.add(job)
    book.transition(1, JobState.SKIPPED, error="node at capacity")  # too close to its deadline
    book.transition(2, JobState.SKIPPED, error="price too low")  # skipped for another reason
    book.transition(3, JobState.SKIPPED, error="node at capacity")
    assert [j.job_id for j in book.skipped_for_capacity("node at capacity", after=1000, limit=5)] == [3]
    assert [j.job_id for j in book.in_states((JobState.SKIPPED,))] == [1, 2, 3]
