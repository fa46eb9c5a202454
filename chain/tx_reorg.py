"""Reorg repair of the transaction manager (chain/tx.py): our transactions mined in blocks a reorg replaced
go back to the pool as the same signed bytes, in nonce order; settled ones are re-checked until final."""

from __future__ import annotations

import logging

from chain.tx_store import TxRecord, TxState

log = logging.getLogger("openlora.tx")


class TxReorgRepair:
    """Mixed into TxManager: uses its w3, store, address, _poll_lock, _receipt and _broadcast."""

    async def reconcile_reorg(self, from_block: int) -> list[TxRecord]:
        """Blocks >= from_block were replaced: every tx of ours mined there whose receipt is gone (or moved
        to another block) goes back to SENT and its same signed bytes are broadcast again, in nonce
        order, so later nonces are not left waiting on a gap. Returns the re-sent records."""
        async with self._poll_lock:
            return await self._reconcile_reorg(from_block)

    async def _reconcile_reorg(self, from_block: int) -> list[TxRecord]:
        resent: list[TxRecord] = []
        for record in self.store.mined_since(self.address, from_block):
            receipt = await self._receipt(record)
            if receipt is not None and receipt["blockHash"].to_0x_hex() == record.mined_block_hash:
                continue
            log.warning(
                "%s: mined in block %s, dropped by a reorg: re-broadcasting nonce %d",
                record.key,
                record.mined_block,
                record.nonce,
            )
            record.state, record.mined_block, record.mined_block_hash, record.mined_hash = (
                TxState.SENT,
                None,
                None,
                None,
            )
            record.error = None
            self.store.put(record)
            resent.append(record)
        for record in resent:
            await self._broadcast(record)
        return resent

    async def find_dropped(self, finality_blocks: int) -> int | None:
        """The lowest block holding a settled (confirmed or reverted) tx of ours that is no longer on
        the canonical chain, looking back `finality_blocks` from the head; None when all still stand.

        `confirmations` only bounds how deep a reorg we expect; a deeper one can drop a tx we already
        call CONFIRMED, and if the event watcher never processed those blocks it has nothing to compare
        against. This re-check closes that gap until the tx is past finality."""
        head = await self.w3.eth.block_number
        settled = (TxState.CONFIRMED, TxState.REVERTED, TxState.CANCELLED)
        by_block: dict[int, set[str]] = {}
        for record in self.store.mined_since(self.address, max(0, head - finality_blocks + 1)):
            if record.state in settled and record.mined_block is not None and record.mined_block_hash:
                by_block.setdefault(record.mined_block, set()).add(record.mined_block_hash)
        for number in sorted(by_block):
            block = await self.w3.eth.get_block(number) if number <= head else None
            canonical = block["hash"].to_0x_hex() if block is not None else None
            if any(h != canonical for h in by_block[number]):
                return number
        return None
