"""Follows the protocol's events on confirmed blocks, with a persisted cursor and reorg detection.

The cursor (block number + hash) is committed by the caller only after it has handled a batch, so a
crash re-delivers the batch rather than losing it; handlers must be idempotent. Each range starts with
a check that its first block's parent is the cursor's block: if not, the watcher walks back through its
stored checkpoints to the last common block and reports `reorg_from`, so the caller can undo what it
derived from the dropped blocks and re-read them.

An RPC failure is an error, never a reorg: it propagates (the caller retries with back-off) and the
cursor stays where it is. Only a block the endpoint *has* with another hash moves the cursor back.
`eth_getLogs` ranges adapt to the provider's limits (chain/log_range.py)."""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from web3 import AsyncWeb3
from web3.contract import AsyncContract

from chain.log_range import AdaptiveRange, is_range_refusal

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


class EndpointBehind(ConnectionError):
    """The endpoint does not have a block it should (it lags): retry, do not read it as a reorg."""


@dataclass(frozen=True)
class HeadInfo:
    """The chain's latest block as last seen: the node's clock and fee view come from here."""

    number: int
    timestamp: int
    base_fee: int
    observed_at: float  # time.monotonic() when it was read

    def chain_time(self, now_monotonic: float | None = None) -> float:
        """The chain's clock now: the head's timestamp plus the time since it was read (never the host's
        wall clock, which may be off by minutes)."""
        now = time.monotonic() if now_monotonic is None else now_monotonic
        return self.timestamp + max(0.0, now - self.observed_at)


@dataclass
class Batch:
    from_block: int
    to_block: int
    to_hash: str
    events: list[ChainEvent] = field(default_factory=list)
    reorg_from: int | None = None  # blocks >= this were replaced since the last batch


def _timed_out(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return isinstance(error, TimeoutError) or "timeout" in text or "timed out" in text or "504" in text


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
        head_tag: str = "latest",
    ) -> None:
        if confirmations < 1:
            raise ValueError("confirmations must be >= 1 (1 = the head block itself)")
        if head_tag not in ("latest", "safe", "finalized"):
            raise ValueError(f"head_tag must be latest, safe or finalized, got {head_tag!r}")
        self.w3 = w3
        self.cursor = cursor
        self.start_block = start_block
        self.confirmations = confirmations
        self.range = AdaptiveRange(max_range)
        self.head_tag = head_tag
        self.addresses = [c.address for c in contracts]
        self.latest: HeadInfo | None = None
        self.processed_block: int | None = None  # last block handed out and committed
        self.rewinds = 0  # cursor moved back (real reorgs only)
        self._decoders: dict[tuple[str, bytes], Any] = {}
        for c in contracts:
            for event in c.all_events():
                topic = bytes(w3.keccak(text=event.signature))
                self._decoders[(c.address.lower(), topic)] = event

    async def _block(self, number: int) -> Any | None:
        """The block, or None when the endpoint says it does not exist. RPC errors propagate."""
        from web3.exceptions import BlockNotFound

        try:
            return await self.w3.eth.get_block(number)
        except BlockNotFound:
            return None

    async def _hash_at(self, number: int) -> str | None:
        block = await self._block(number)
        if block is None:
            if self.latest is not None and number > self.latest.number:
                return None
            raise EndpointBehind(f"the RPC endpoint has no block {number}: it lags behind, retrying")
        return block["hash"].to_0x_hex()

    async def _find_reorg(self) -> int:
        """The cursor's block was replaced: walk back to the last checkpoint still canonical and return the
        first block to re-read. RPC errors propagate (nothing is rewound on an error)."""
        for block, block_hash in self.cursor.checkpoints_desc():
            if await self._hash_at(block) == block_hash:
                self.cursor.rewind_to(block)
                self.rewinds += 1
                return block + 1
        log.error(
            "chain reorganised deeper than every stored checkpoint: re-reading from block %d",
            self.start_block,
        )
        self.cursor.rewind_to(self.start_block - 1)
        self.rewinds += 1
        return self.start_block

    async def refresh_head(self) -> int:
        """The last block the watcher may read: `confirmations` below the head, or the chain's `safe` /
        `finalized` block where configured and supported."""
        provider = self.w3.provider
        probe = getattr(provider, "probe_heads", None)
        if probe is not None:
            await probe()  # lagging endpoints leave the rotation before we read from them
        latest = await self.w3.eth.get_block("latest")
        self.latest = HeadInfo(
            latest["number"], latest["timestamp"], int(latest.get("baseFeePerGas", 0)), time.monotonic()
        )
        top = latest["number"]
        lowest = getattr(provider, "lowest_head_in_rotation", lambda: None)()
        if lowest is not None:
            top = min(top, lowest)  # every endpoint that may serve the read has these blocks
        safe = top - self.confirmations + 1
        if self.head_tag != "latest":
            try:
                tagged = await self.w3.eth.get_block(self.head_tag)
                safe = min(safe, tagged["number"])
            except ValueError as e:  # the chain has no such tag: confirmations alone
                log.warning("chain has no %r block tag (%s): using confirmations", self.head_tag, e)
                self.head_tag = "latest"
        return safe

    async def next_batch(self) -> Batch | None:
        """Read the next range of confirmed blocks (None when caught up). Call `commit` after handling."""
        safe = await self.refresh_head()
        head = self.cursor.head()
        reorg_from = None
        start = head[0] + 1 if head else self.start_block
        if head is not None and start > safe:
            if self.latest is not None and head[0] > self.latest.number:
                return None  # this endpoint is behind our cursor: wait (a shorter chain grows back past it)
            # caught up: the cursor's block itself may still have been replaced
            if await self._hash_at(head[0]) != head[1]:
                reorg_from = await self._find_reorg()
        end = min(safe, start + self.range.size - 1)
        if reorg_from is None and head is not None and end >= start:
            first = await self._block(start)
            if first is None:
                raise EndpointBehind(f"the RPC endpoint has no block {start}: it lags behind, retrying")
            if first["parentHash"].to_0x_hex() != head[1]:
                reorg_from = await self._find_reorg()
        if reorg_from is not None:
            log.warning("chain reorganised: re-reading from block %d", reorg_from)
            start = reorg_from
            end = min(safe, start + self.range.size - 1)
        if end < start:
            return Batch(start, start - 1, "", [], reorg_from) if reorg_from is not None else None
        end_hash = await self._hash_at(end)
        logs, read_to = await self._get_logs(start, end)  # a refused range comes back shorter
        if read_to != end:
            end, end_hash = read_to, await self._hash_at(read_to)  # the parent check of the next batch
            # still catches a reorg of this block that happened while its logs were read
        if end_hash is None or await self._hash_at(end) != end_hash:
            return None  # the range changed under us: try again on the next poll
        events = [self._decode(entry) for entry in logs]
        return Batch(start, end, end_hash, [e for e in events if e is not None], reorg_from)

    async def _get_logs(self, start: int, end: int) -> tuple[list, int]:
        """eth_getLogs over [start, end]; a range the provider refuses is shrunk and retried at once.
        Returns the logs and the range's real end (the batch covers exactly what was read)."""
        while True:
            try:
                logs = await self.w3.eth.get_logs(
                    {"fromBlock": start, "toBlock": end, "address": self.addresses}
                )
            except Exception as e:
                if end > start and is_range_refusal(e):
                    self.range.refused(e, start, end - start + 1)
                    log.info(
                        "eth_getLogs [%d, %d] refused (%s): range now %d", start, end, e, self.range.size
                    )
                    end = start + self.range.size - 1
                    continue
                if end > start and _timed_out(e):  # a range too heavy to answer in time: smaller next try
                    self.range.refused(e, start, end - start + 1)
                raise
            self.range.succeeded()
            return logs, end

    def commit(self, batch: Batch) -> None:
        if batch.to_block >= batch.from_block:
            self.cursor.commit(batch.to_block, batch.to_hash)
            self.processed_block = batch.to_block

    def lag_blocks(self) -> int | None:
        """Blocks between the chain's head and what the watcher has processed (None before any head)."""
        if self.latest is None:
            return None
        head = self.cursor.head()
        done = head[0] if head is not None else self.start_block - 1
        return max(0, self.latest.number - done)

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
