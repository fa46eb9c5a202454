"""Follows the protocol's events on confirmed blocks, with a persisted cursor and reorg detection.

The cursor (block number + hash) is committed by the caller only after it has handled a batch, so a
crash re-delivers the batch rather than losing it; handlers must be idempotent. Before each read the
cursor's hash is compared with the chain: if it changed, the watcher walks back through its stored
checkpoints to the last common block and reports `reorg_from`, so the caller can undo what it
derived from the dropped blocks and re-read them."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from web3 import AsyncWeb3
from web3.contract import AsyncContract

log = logging.getLogger("openlora.watcher")


@dataclass(frozen=True)
class ChainEvent:
    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    block_hash: str
    tx_hash: str
    log_index: int


@dataclass
class Batch:
    from_block: int
    to_block: int
    to_hash: str
    events: list[ChainEvent] = field(default_factory=list)
    reorg_from: int | None = None  # blocks >= this were replaced since the last batch


class CursorStore:
    """Checkpoints (block number -> hash) of what has been handled, in SQLite."""

    def __init__(self, conn: sqlite3.Connection, name: str = "protocol") -> None:
        self.conn = conn
        self.name = name
        conn.execute(
            "CREATE TABLE IF NOT EXISTS watch_checkpoints (name TEXT NOT NULL, block INTEGER NOT NULL,"
            " hash TEXT NOT NULL, PRIMARY KEY (name, block))"
        )
        conn.commit()

    def head(self) -> tuple[int, str] | None:
        row = self.conn.execute(
            "SELECT block, hash FROM watch_checkpoints WHERE name = ? ORDER BY block DESC LIMIT 1",
            (self.name,),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def checkpoints_desc(self) -> list[tuple[int, str]]:
        return list(
            self.conn.execute(
                "SELECT block, hash FROM watch_checkpoints WHERE name = ? ORDER BY block DESC", (self.name,)
            )
        )

    def commit(self, block: int, block_hash: str, keep: int = 256) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO watch_checkpoints(name, block, hash) VALUES (?, ?, ?)",
            (self.name, block, block_hash),
        )
        self.conn.execute(
            "DELETE FROM watch_checkpoints WHERE name = ? AND block NOT IN"
            " (SELECT block FROM watch_checkpoints"
            " WHERE name = ? ORDER BY block DESC LIMIT ?)",
            (self.name, self.name, keep),
        )
        self.conn.commit()

    def rewind_to(self, block: int) -> None:
        self.conn.execute("DELETE FROM watch_checkpoints WHERE name = ? AND block > ?", (self.name, block))
        self.conn.commit()


class EventWatcher:
    def __init__(
        self,
        w3: AsyncWeb3,
        contracts: list[AsyncContract],
        cursor: CursorStore,
        *,
        start_block: int,
        confirmations: int = 1,
        max_range: int = 2000,
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1 (1 = the head block itself)")
        self.w3 = w3
        self.cursor = cursor
        self.start_block = start_block
        self.confirmations = confirmations
        self.max_range = max_range
        self.addresses = [c.address for c in contracts]
        self._decoders: dict[tuple[str, bytes], Any] = {}
        for c in contracts:
            for event in c.all_events():
                topic = bytes(w3.keccak(text=event.signature))
                self._decoders[(c.address.lower(), topic)] = event

    async def _canonical_hash(self, block: int) -> str | None:
        try:
            b = await self.w3.eth.get_block(block)
        except Exception:
            return None
        return b["hash"].to_0x_hex()

    async def _find_reorg(self) -> int | None:
        """None if the cursor is still canonical, else the first block to re-read."""
        head = self.cursor.head()
        if head is None or await self._canonical_hash(head[0]) == head[1]:
            return None
        for block, block_hash in self.cursor.checkpoints_desc():
            if await self._canonical_hash(block) == block_hash:
                self.cursor.rewind_to(block)
                return block + 1
        self.cursor.rewind_to(self.start_block - 1)
        return self.start_block

    async def next_batch(self) -> Batch | None:
        """Read the next range of confirmed blocks (None when caught up). Call `commit` after handling."""
        reorg_from = await self._find_reorg()
        if reorg_from is not None:
            log.warning("chain reorganised: re-reading from block %d", reorg_from)
        head = self.cursor.head()
        start = head[0] + 1 if head else self.start_block
        safe = await self.w3.eth.block_number - self.confirmations + 1
        end = min(safe, start + self.max_range - 1)
        if end < start:
            return Batch(start, start - 1, "", [], reorg_from) if reorg_from is not None else None
        end_hash = await self._canonical_hash(end)
        logs = await self.w3.eth.get_logs({"fromBlock": start, "toBlock": end, "address": self.addresses})
        if await self._canonical_hash(end) != end_hash or end_hash is None:
            return None  # the range changed under us: try again on the next poll
        events = [self._decode(entry) for entry in logs]
        return Batch(start, end, end_hash, [e for e in events if e is not None], reorg_from)

    def commit(self, batch: Batch) -> None:
        if batch.to_block >= batch.from_block:
            self.cursor.commit(batch.to_block, batch.to_hash)

    def _decode(self, entry: Any) -> ChainEvent | None:
        topics = entry["topics"]
        if not topics:
            return None
        event = self._decoders.get((entry["address"].lower(), bytes(topics[0])))
        if event is None:
            return None
        decoded = event.process_log(entry)
        return ChainEvent(
            name=decoded["event"],
            args=dict(decoded["args"]),
            address=entry["address"],
            block_number=entry["blockNumber"],
            block_hash=entry["blockHash"].to_0x_hex(),
            tx_hash=entry["transactionHash"].to_0x_hex(),
            log_index=entry["logIndex"],
        )
