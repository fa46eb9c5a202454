"""Persistence for the transaction manager, behind a small interface (SQLite here)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Protocol


class TxState(StrEnum):
    SIGNED = "signed"  # persisted with its nonce and raw bytes, maybe not yet broadcast
    SENT = "sent"  # broadcast, no receipt yet
    MINED = "mined"  # receipt with status 1, not yet deep enough
    CONFIRMED = "confirmed"  # status 1 and `confirmations` blocks deep
    REVERTED = "reverted"  # mined with status 0
    FAILED = "failed"  # never mined: nonce used by another tx, or given up
    CANCELLED = "cancelled"  # replaced by a zero-value self-transfer at its nonce, which was mined


TERMINAL = {TxState.CONFIRMED, TxState.REVERTED, TxState.FAILED, TxState.CANCELLED}


@dataclass
class TxRecord:
    key: str  # idempotency key, e.g. "claim:42": one logical transaction, whatever the fee bumps
    sender: str
    to: str
    data: str
    value: int
    nonce: int
    gas: int
    max_fee: int
    priority_fee: int
    state: TxState = TxState.SIGNED
    raw: str = ""  # latest signed raw tx (hex), re-broadcast as is after a restart or a reorg
    hashes: list[str] = field(default_factory=list)  # every hash sent for this nonce (fee bumps)
    sent_at: float = 0.0
    mined_block: int | None = None
    mined_block_hash: str | None = None
    mined_hash: str | None = None
    gas_used: int | None = None
    effective_gas_price: int | None = None
    error: str | None = None
    bumps: int = 0
    # hashes[cancel_from:] are zero-value self-transfers replacing the tx at its nonce (None: not cancelled)
    cancel_from: int | None = None
    broadcast_error: str | None = None  # class of the last failed broadcast (chain/tx_errors.py), None if ok
    first_sent_at: float = 0.0  # first broadcast; with sent_at (the latest) it tells how long it is pending

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


class TxStore(Protocol):
    def get(self, key: str) -> TxRecord | None: ...
    def put(self, record: TxRecord) -> None: ...
    def active(self, sender: str) -> list[TxRecord]: ...
    def max_nonce(self, sender: str) -> int | None: ...
    def mined_since(self, sender: str, block: int) -> list[TxRecord]: ...


class SqliteTxStore:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS txs (key TEXT PRIMARY KEY, sender TEXT NOT NULL,"
            " nonce INTEGER NOT NULL,"
            " state TEXT NOT NULL, body TEXT NOT NULL)"
        )
        conn.execute("CREATE INDEX IF NOT EXISTS txs_sender_state ON txs(sender, state)")
        columns = {row[1] for row in conn.execute("PRAGMA table_info(txs)")}
        if "mined_block" not in columns:  # databases written before the column existed
            conn.execute("ALTER TABLE txs ADD COLUMN mined_block INTEGER")
            conn.execute("UPDATE txs SET mined_block = json_extract(body, '$.mined_block')")
        conn.execute("CREATE INDEX IF NOT EXISTS txs_sender_mined ON txs(sender, mined_block)")
        conn.commit()

    def get(self, key: str) -> TxRecord | None:
        row = self.conn.execute("SELECT body FROM txs WHERE key = ?", (key,)).fetchone()
        return _decode(row[0]) if row else None

    def put(self, record: TxRecord) -> None:
        self.conn.execute(
            "INSERT INTO txs(key, sender, nonce, state, mined_block, body) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET nonce = excluded.nonce, state = excluded.state,"
            " mined_block = excluded.mined_block, body = excluded.body",
            (
                record.key,
                record.sender,
                record.nonce,
                record.state.value,
                record.mined_block,
                json.dumps(asdict(record)),
            ),
        )
        self.conn.commit()

    def active(self, sender: str) -> list[TxRecord]:
        rows = self.conn.execute(
            "SELECT body FROM txs WHERE sender = ? AND state NOT IN (?, ?, ?, ?) ORDER BY nonce",
            (sender, *[s.value for s in TERMINAL]),
        ).fetchall()
        return [_decode(r[0]) for r in rows]

    def max_nonce(self, sender: str) -> int | None:
        row = self.conn.execute(
            "SELECT MAX(nonce) FROM txs WHERE sender = ? AND state != ?", (sender, TxState.FAILED.value)
        ).fetchone()
        return row[0]

    def mined_since(self, sender: str, block: int) -> list[TxRecord]:
        """Records with a receipt in a block >= `block` (candidates for a reorg to have dropped), by nonce."""
        rows = self.conn.execute(
            "SELECT body FROM txs WHERE sender = ? AND mined_block >= ? AND state IN (?, ?, ?, ?)"
            " ORDER BY nonce",
            (
                sender,
                block,
                TxState.MINED.value,
                TxState.CONFIRMED.value,
                TxState.REVERTED.value,
                TxState.CANCELLED.value,
            ),
        ).fetchall()
        return [_decode(b[0]) for b in rows]

    def totals(self, sender: str) -> tuple[int, int]:
        """(transactions mined, wei spent on gas) for metrics."""
        count, spent = 0, 0
        for (body,) in self.conn.execute("SELECT body FROM txs WHERE sender = ?", (sender,)):
            rec = _decode(body)
            if rec.gas_used is not None and rec.effective_gas_price is not None:
                count += 1
                spent += rec.gas_used * rec.effective_gas_price
        return count, spent


_FIELDS = {f.name for f in fields(TxRecord)}


def _decode(body: str) -> TxRecord:
    data = json.loads(body)  # our own rows, written by `put`
    data["state"] = TxState(data["state"])
    return TxRecord(**{k: v for k, v in data.items() if k in _FIELDS})
