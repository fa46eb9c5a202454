"""The job state machine, persisted in SQLite (WAL). Every other part asks it; nothing duplicates it.

    SEEN ─▶ FETCHING ─▶ CLAIMING ─▶ CLAIMED ─▶ RUNNING ─▶ POSTING ─▶ PAID
      │         │           │           │          │          │
      └─────────┴───────────┴───────────┴──────────┴──────────┴──▶ SKIPPED|LOST|EXPIRED|CANCELLED|FAILED

The adapter is fetched, verified and validated *before* the claim: a node never stakes a claim on a
job it cannot serve, and a hostile adapter costs it nothing but bandwidth. A state is written before
the side effect it leads to, so a restart resumes each job from its last state; the transaction
manager's idempotency keys make the on-chain steps safe to repeat."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path


class JobState(StrEnum):
    SEEN = "seen"
    FETCHING = "fetching"
    CLAIMING = "claiming"
    CLAIMED = "claimed"
    RUNNING = "running"
    POSTING = "posting"
    PAID = "paid"
    SKIPPED = "skipped"  # left for other nodes: policy, admission or a rejected adapter
    LOST = "lost"  # another node claimed it
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    FAILED = "failed"


TERMINAL = frozenset(
    {JobState.PAID, JobState.SKIPPED, JobState.LOST, JobState.EXPIRED, JobState.CANCELLED, JobState.FAILED}
)
_ENDINGS = {JobState.LOST, JobState.EXPIRED, JobState.CANCELLED, JobState.FAILED}

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.SEEN: frozenset({JobState.FETCHING, JobState.SKIPPED} | _ENDINGS),
    JobState.FETCHING: frozenset({JobState.CLAIMING, JobState.SKIPPED} | _ENDINGS),
    JobState.CLAIMING: frozenset({JobState.CLAIMED, JobState.SKIPPED} | _ENDINGS),  # SKIPPED: no stake free
    JobState.CLAIMED: frozenset(
        {JobState.RUNNING, JobState.CLAIMING} | _ENDINGS
    ),  # CLAIMING: claim undone by reorg
    JobState.RUNNING: frozenset({JobState.POSTING, JobState.CLAIMING} | _ENDINGS),
    JobState.POSTING: frozenset({JobState.PAID, JobState.CLAIMING} | _ENDINGS),
    JobState.PAID: frozenset({JobState.POSTING}),  # a reorg dropped the paying result: post again
    JobState.LOST: frozenset({JobState.SEEN, JobState.EXPIRED, JobState.CANCELLED}),  # rival's claim undone
    JobState.SKIPPED: frozenset({JobState.SEEN, JobState.EXPIRED, JobState.CANCELLED, JobState.LOST}),
    JobState.EXPIRED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.FAILED: frozenset({JobState.EXPIRED}),
}


class IllegalTransitionError(RuntimeError):
    pass


# TEST HOOK (fault injection only): with OPENLORA_TEST_CRASH_AT=<state> the process dies with exit code
# 137, as under SIGKILL, right after a job's move into that state is committed. Never set it in production.
CRASH_HOOK_ENV = "OPENLORA_TEST_CRASH_AT"


def _crash_hook(state: JobState) -> None:
    if os.environ.get(CRASH_HOOK_ENV) == state.value:
        os._exit(137)


@dataclass
class Job:
    job_id: int
    state: JobState
    submitter: str
    adapter_id: int
    adapter_hash: bytes
    input: bytes
    input_cid: str
    input_hash: bytes
    max_tokens: int
    deadline: int
    price: int
    seen_block: int
    adapter_cid: str = ""
    claim_after: float = 0.0  # warm-aware claiming: a warm peer gets a head start until this time
    output: bytes | None = None
    signature: bytes | None = None
    claim_tx: str | None = None
    result_tx: str | None = None
    terms: dict | None = None  # chain.terms.Terms.to_json(): what every call on this job re-supplies
    claim_key: str | None = None  # tx key of the (batched) claim that covers this job
    result_key: str | None = None  # tx key of the (batched) result that covers this job
    proof_hash: bytes | None = None  # hash of the verification proof signed with the result
    node_amount: int | None = None
    adapter_amount: int | None = None
    protocol_amount: int | None = None
    error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


_COLUMNS = [f.name for f in fields(Job)]


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


class JobBook:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS jobs (job_id INTEGER PRIMARY KEY, state TEXT NOT NULL,"
            " body TEXT NOT NULL,"
            " updated_at REAL NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS job_log (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " job_id INTEGER NOT NULL,"
            " at REAL NOT NULL, from_state TEXT, to_state TEXT NOT NULL, note TEXT)"
        )
        conn.commit()

    def add(self, job: Job) -> bool:
        """Record a newly seen job; False if it was already known (events are re-delivered)."""
        now = time.time()
        job.created_at = job.created_at or now
        job.updated_at = now
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO jobs(job_id, state, body, updated_at) VALUES (?, ?, ?, ?)",
            (job.job_id, job.state.value, _encode(job), now),
        )
        if cur.rowcount:
            self.conn.execute(
                "INSERT INTO job_log(job_id, at, from_state, to_state, note) VALUES (?, ?, NULL, ?, ?)",
                (job.job_id, now, job.state.value, "seen on chain"),
            )
        self.conn.commit()
        if cur.rowcount:
            _crash_hook(job.state)
        return bool(cur.rowcount)

    def get(self, job_id: int) -> Job | None:
        row = self.conn.execute("SELECT body FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _decode(row[0]) if row else None

    def transition(self, job_id: int, to: JobState, note: str = "", **updates: object) -> Job:
        """Move a job to `to` (if the machine allows it) and persist any field updates with it, atomically."""
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"unknown job {job_id}")
        if to != job.state and to not in TRANSITIONS[job.state]:
            raise IllegalTransitionError(f"job {job_id}: {job.state.value} -> {to.value} is not allowed")
        before = job.state
        for k, v in updates.items():
            setattr(job, k, v)
        job.state = to
        job.updated_at = time.time()
        with self.conn:
            self.conn.execute(
                "UPDATE jobs SET state = ?, body = ?, updated_at = ? WHERE job_id = ?",
                (to.value, _encode(job), job.updated_at, job_id),
            )
            if to != before or note:
                self.conn.execute(
                    "INSERT INTO job_log(job_id, at, from_state, to_state, note) VALUES (?, ?, ?, ?, ?)",
                    (job_id, job.updated_at, before.value, to.value, note),
                )
        if to != before:
            _crash_hook(to)
        return job

    def can(self, job_id: int, to: JobState) -> bool:
        job = self.get(job_id)
        return job is not None and (to == job.state or to in TRANSITIONS[job.state])

    def active(self) -> list[Job]:
        rows = self.conn.execute(
            f"SELECT body FROM jobs WHERE state NOT IN ({','.join('?' * len(TERMINAL))}) ORDER BY job_id",
            [s.value for s in TERMINAL],
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    def recent(self, limit: int = 50) -> list[Job]:
        rows = self.conn.execute("SELECT body FROM jobs ORDER BY job_id DESC LIMIT ?", (limit,)).fetchall()
        return [_decode(r[0]) for r in rows]

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobState}
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def history(self, job_id: int) -> list[tuple[float, str | None, str, str]]:
        return list(
            self.conn.execute(
                "SELECT at, from_state, to_state, note FROM job_log WHERE job_id = ? ORDER BY id", (job_id,)
            )
        )

    def in_states(self, states: tuple[JobState, ...] | frozenset[JobState]) -> list[Job]:
        values = [s.value for s in states]
        rows = self.conn.execute(
            f"SELECT body FROM jobs WHERE state IN ({','.join('?' * len(values))}) ORDER BY job_id",
            values,
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    def skipped_for_capacity(self, error: str, *, after: float, limit: int) -> list[Job]:
        """Oldest SKIPPED jobs whose error is `error` and whose deadline is later than `after`."""
        rows = self.conn.execute(
            "SELECT body FROM jobs WHERE state = ? AND json_extract(body, '$.error') = ?"
            " AND json_extract(body, '$.deadline') > ? ORDER BY job_id LIMIT ?",
            (JobState.SKIPPED.value, error, after, limit),
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    def skipped_with_note_prefix(self, prefix: str, *, after: float, limit: int) -> list[Job]:
        """Oldest SKIPPED jobs whose error starts with `prefix` (a transient refusal's kind) and whose
        deadline is later than `after`."""
        rows = self.conn.execute(
            "SELECT body FROM jobs WHERE state = ? AND substr(json_extract(body, '$.error'), 1, ?) = ?"
            " AND json_extract(body, '$.deadline') > ? ORDER BY job_id LIMIT ?",
            (JobState.SKIPPED.value, len(prefix), prefix, after, limit),
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    def seen_since(self, block: int) -> list[Job]:
        return [
            j
            for j in (self.get(r[0]) for r in self.conn.execute("SELECT job_id FROM jobs"))
            if j is not None and j.seen_block >= block
        ]


def _encode(job: Job) -> str:
    data = {}
    for name in _COLUMNS:
        v = getattr(job, name)
        data[name] = ("0x" + v.hex()) if isinstance(v, bytes) else v
    return json.dumps(data)


_BYTES_FIELDS = {"adapter_hash", "input", "input_hash", "output", "signature", "proof_hash"}


def _decode(body: str) -> Job:
    data = json.loads(body)
    for name in _BYTES_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = bytes.fromhex(data[name][2:])
    data["state"] = JobState(data["state"])
    return Job(**data)
