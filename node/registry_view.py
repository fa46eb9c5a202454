"""What the node knows of adapters and nodes, built only from registry events (never by scanning storage)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from chain.watcher import ChainEvent


@dataclass(frozen=True)
class AdapterRecord:
    adapter_id: int
    publisher: str
    cid: str
    content_hash: bytes
    base_model: bytes
    rank: int
    size: int
    fee_per_job: int
    retired: bool
    attestations: int


class RegistryView:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.executescript(
            "CREATE TABLE IF NOT EXISTS adapters (adapter_id INTEGER PRIMARY KEY, publisher TEXT, cid TEXT,"
            " content_hash BLOB, base_model BLOB, rank INTEGER, size INTEGER, fee INTEGER, retired INTEGER);"
            "CREATE TABLE IF NOT EXISTS attestations (adapter_id INTEGER, validator TEXT,"
            " PRIMARY KEY (adapter_id, validator));"
            "CREATE TABLE IF NOT EXISTS nodes (operator TEXT PRIMARY KEY, signer TEXT, base_model BLOB,"
            " peer_id TEXT, stake INTEGER);"
        )
        conn.commit()

    def apply(self, e: ChainEvent) -> bool:
        """Fold one registry event in; False if the event is not a registry event."""
        a = e.args
        match e.name:
            case "AdapterRegistered":
                self.conn.execute(
                    "INSERT OR REPLACE INTO adapters VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                    (
                        a["adapterId"],
                        a["publisher"],
                        a["cid"],
                        bytes(a["contentHash"]),
                        bytes(a["baseModel"]),
                        a["rank"],
                        a["size"],
                        str(a["feePerJob"]),
                    ),
                )
            case "AdapterFeeUpdated":
                self.conn.execute(
                    "UPDATE adapters SET fee = ? WHERE adapter_id = ?", (str(a["feePerJob"]), a["adapterId"])
                )
            case "AdapterRetired":
                self.conn.execute("UPDATE adapters SET retired = 1 WHERE adapter_id = ?", (a["adapterId"],))
            case "AdapterAttested":
                self.conn.execute(
                    "INSERT OR IGNORE INTO attestations VALUES (?, ?)", (a["adapterId"], a["validator"])
                )
            case "AdapterAttestationRevoked":
                self.conn.execute(
                    "DELETE FROM attestations WHERE adapter_id = ? AND validator = ?",
                    (a["adapterId"], a["validator"]),
                )
            case "NodeRegistered" | "NodeUpdated":
                stake = a.get("stake")
                self.conn.execute(
                    "INSERT INTO nodes(operator, signer, base_model, peer_id, stake) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(operator) DO UPDATE SET signer = excluded.signer,"
                    " base_model = excluded.base_model,"
                    " peer_id = excluded.peer_id, stake = COALESCE(excluded.stake, nodes.stake)",
                    (
                        a["operator"],
                        a["signer"],
                        bytes(a["baseModel"]),
                        a["peerId"],
                        str(stake) if stake is not None else None,
                    ),
                )
            case _:
                return False
        self.conn.commit()
        return True

    _SELECT = (
        "SELECT adapter_id, publisher, cid, content_hash, base_model, rank, size, fee, retired,"
        " (SELECT COUNT(*) FROM attestations t WHERE t.adapter_id = a.adapter_id) FROM adapters a"
    )

    @staticmethod
    def _record(row: tuple) -> AdapterRecord:
        return AdapterRecord(
            row[0],
            row[1],
            row[2],
            bytes(row[3]),
            bytes(row[4]),
            row[5],
            row[6],
            int(row[7]),
            bool(row[8]),
            row[9],
        )

    def adapter(self, adapter_id: int) -> AdapterRecord | None:
        row = self.conn.execute(f"{self._SELECT} WHERE adapter_id = ?", (adapter_id,)).fetchone()
        return self._record(row) if row else None

    def adapters(self, base_model: bytes | None = None) -> list[AdapterRecord]:
        """Live (not retired) adapters, optionally for one base model, newest first."""
        where, args = (
            ("WHERE retired = 0", ())
            if base_model is None
            else ("WHERE retired = 0 AND base_model = ?", (base_model,))
        )
        rows = self.conn.execute(f"{self._SELECT} {where} ORDER BY adapter_id DESC", args).fetchall()
        return [self._record(r) for r in rows]

    def adapter_by_cid(self, cid: str) -> AdapterRecord | None:
        """The newest live registration of this CID."""
        row = self.conn.execute(
            f"{self._SELECT} WHERE cid = ? AND retired = 0 ORDER BY adapter_id DESC LIMIT 1", (cid,)
        ).fetchone()
        return self._record(row) if row else None

    def signer_of(self, operator: str) -> str | None:
        row = self.conn.execute("SELECT signer FROM nodes WHERE operator = ?", (operator,)).fetchone()
        return row[0] if row else None

    def is_registered_signer(self, signer: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM nodes WHERE lower(signer) = lower(?)", (signer,)).fetchone()
            is not None
        )
