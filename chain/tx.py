"""The transaction manager: one nonce sequencer per sending key, EIP-1559 fees, simulation before
sending, receipt tracking, fee bumping of stuck transactions and re-broadcast after a reorg.

Every logical transaction has an idempotency key ("claim:42"). `send` with a key that already
exists returns the existing record instead of sending again, so a restarted node never pays gas
twice for the same claim or result. The record (nonce + signed bytes) is persisted before it is
broadcast, so a crash between the two is recovered by re-broadcasting the same bytes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound

from chain.errors import describe_revert
from chain.tx_store import TxRecord, TxState, TxStore

log = logging.getLogger("openlora.tx")


class SimulationError(RuntimeError):
    """eth_call says the transaction would revert: nothing was sent, no gas spent."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: would revert: {reason}")
        self.key = key
        self.reason = reason


class TxFailedError(RuntimeError):
    def __init__(self, record: TxRecord) -> None:
        super().__init__(f"{record.key}: transaction {record.state.value}: {record.error or ''}".strip())
        self.record = record


@dataclass(frozen=True)
class FeePolicy:
    max_fee_gwei: float = 200.0  # hard cap on maxFeePerGas
    max_priority_fee_gwei: float = 5.0
    bump_after_s: float = 30.0  # no receipt after this long: replace with higher fees, same nonce
    bump_percent: int = 15  # geth needs at least +10% on both fee fields
    max_bumps: int = 8
    gas_multiplier: float = 1.25


def _gwei(x: float) -> int:
    return int(x * 10**9)


class TxManager:
    def __init__(
        self,
        w3: AsyncWeb3,
        account: LocalAccount,
        store: TxStore,
        *,
        fees: FeePolicy | None = None,
        confirmations: int = 1,
        chain_id: int | None = None,
    ) -> None:
        self.w3 = w3
        self.account = account
        self.store = store
        self.fees = fees or FeePolicy()
        self.confirmations = confirmations
        self._chain_id = chain_id
        self._nonce_lock = asyncio.Lock()
        # one receipt check at a time: the monitor loop and every `wait` poll, and two checks of the same
        # record working on stale copies would bump it twice or miss the hash that was mined
        self._poll_lock = asyncio.Lock()
        self._next_nonce: int | None = None

    @property
    def address(self) -> str:
        return self.account.address

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = await self.w3.eth.chain_id
        return self._chain_id

    async def resync_nonce(self) -> int:
        """Next nonce = max(chain's pending count, highest nonce we persisted + 1)."""
        async with self._nonce_lock:
            chain_next = await self.w3.eth.get_transaction_count(self.address, "pending")
            stored = self.store.max_nonce(self.address)
            self._next_nonce = max(chain_next, (stored + 1) if stored is not None else 0)
            return self._next_nonce

    async def simulate(self, key: str, to: str, data: str, value: int = 0) -> int:
        """eth_call + estimateGas: returns the gas limit to use, or raises SimulationError."""
        call = {"from": self.address, "to": to, "data": data, "value": value}
        try:
            await self.w3.eth.call(call)
            estimate = await self.w3.eth.estimate_gas(call)
        except ContractCustomError as e:
            raise SimulationError(
                key, describe_revert(e.data if isinstance(e.data, str) else e.message)
            ) from e
        except ContractLogicError as e:
            raise SimulationError(key, describe_revert(e.data) if e.data else str(e)) from e
        return int(estimate * self.fees.gas_multiplier)

    async def _fees(self, block_id: str = "latest") -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): 2 x base fee + tip covers several full blocks of base-fee
        rises; both capped by the policy."""
        block = await self.w3.eth.get_block(block_id)
        base = int(block.get("baseFeePerGas", 0))
        try:
            suggested = int(await self.w3.eth.max_priority_fee)
        except Exception:
            suggested = _gwei(1)
        priority = min(suggested, _gwei(self.fees.max_priority_fee_gwei))
        max_fee = min(2 * base + priority, _gwei(self.fees.max_fee_gwei))
        return max(max_fee, priority), priority

    async def send(self, key: str, to: str, data: str, value: int = 0) -> TxRecord:
        """Send once per key. Simulates first (SimulationError: nothing sent). Returns the record."""
        existing = self.store.get(key)
        if existing is not None and existing.state != TxState.FAILED:
            return existing
        gas = await self.simulate(key, to, data, value)
        max_fee, priority = await self._fees()
        async with self._nonce_lock:
            if self._next_nonce is None:
                chain_next = await self.w3.eth.get_transaction_count(self.address, "pending")
                stored = self.store.max_nonce(self.address)
                self._next_nonce = max(chain_next, (stored + 1) if stored is not None else 0)
            nonce = self._next_nonce
            self._next_nonce += 1
            record = TxRecord(
                key=key,
                sender=self.address,
                to=to,
                data=data,
                value=value,
                nonce=nonce,
                gas=gas,
                max_fee=max_fee,
                priority_fee=priority,
            )
            await self._sign(record)
            self.store.put(record)  # persisted before broadcast: a crash here is recovered by re-broadcast
        await self._broadcast(record)
        return record

    async def _sign(self, record: TxRecord) -> None:
        tx = {
            "type": 2,
            "chainId": await self.chain_id(),
            "nonce": record.nonce,
            "to": record.to,
            "data": record.data,
            "value": record.value,
            "gas": record.gas,
            "maxFeePerGas": record.max_fee,
            "maxPriorityFeePerGas": record.priority_fee,
        }
        signed = self.account.sign_transaction(tx)
        record.raw = signed.raw_transaction.to_0x_hex()
        tx_hash = signed.hash.to_0x_hex()
        if tx_hash not in record.hashes:
            record.hashes.append(tx_hash)

    async def _broadcast(self, record: TxRecord) -> None:
        try:
            await self.w3.eth.send_raw_transaction(record.raw)
        except Exception as e:  # "already known" / "nonce too low" are decided by the receipt check
            msg = str(e).lower()
            if "already known" not in msg and "nonce too low" not in msg:
                log.warning("broadcast of %s (nonce %d) failed: %s", record.key, record.nonce, e)
        record.state = TxState.SENT if record.state in (TxState.SIGNED, TxState.SENT) else record.state
        record.sent_at = time.time()
        self.store.put(record)

    async def recover(self) -> None:
        """After a restart: resync the nonce and re-broadcast whatever was signed but not confirmed."""
        await self.resync_nonce()
        for record in self.store.active(self.address):
            if record.state in (TxState.SIGNED, TxState.SENT):
                log.info("re-broadcasting %s (nonce %d) after restart", record.key, record.nonce)
                await self._broadcast(record)

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
        settled = (TxState.CONFIRMED, TxState.REVERTED)
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

    async def poll(self) -> list[TxRecord]:
        """One pass over in-flight transactions; returns those that changed state."""
        changed: list[TxRecord] = []
        async with self._poll_lock:
            head = await self.w3.eth.block_number
            for record in self.store.active(self.address):
                before = record.state
                await self._check(record, head)
                if record.state != before:
                    self.store.put(record)
                    changed.append(record)
        return changed

    async def _receipt(self, record: TxRecord) -> dict | None:
        for h in reversed(record.hashes):
            try:
                return dict(await self.w3.eth.get_transaction_receipt(h))
            except TransactionNotFound:
                continue
        return None

    async def _check(self, record: TxRecord, head: int) -> None:
        receipt = await self._receipt(record)
        if receipt is None:
            if record.state == TxState.MINED:
                log.warning(
                    "%s: receipt vanished (reorg), re-broadcasting nonce %d", record.key, record.nonce
                )
                record.state, record.mined_block, record.mined_block_hash = TxState.SENT, None, None
                await self._broadcast(record)
                return
            if await self.w3.eth.get_transaction_count(self.address, "latest") > record.nonce:
                receipt = await self._receipt(record)  # mined between the two reads?
                if receipt is None:
                    # our nonce was consumed by a tx we do not know: it can never be mined
                    record.state, record.error = TxState.FAILED, "nonce consumed by another transaction"
                    await self.resync_nonce()
                    return
            elif time.time() - record.sent_at >= self.fees.bump_after_s:
                await self._bump(record)
                return
            else:
                return
        record.mined_block = receipt["blockNumber"]
        record.mined_block_hash = receipt["blockHash"].to_0x_hex()
        record.mined_hash = receipt["transactionHash"].to_0x_hex()
        record.gas_used = receipt["gasUsed"]
        record.effective_gas_price = receipt.get("effectiveGasPrice")
        if receipt["status"] != 1:
            record.state, record.error = TxState.REVERTED, "reverted on chain"
            return
        if head - record.mined_block + 1 >= self.confirmations:
            block = await self.w3.eth.get_block(record.mined_block)
            if block["hash"].to_0x_hex() == record.mined_block_hash:
                record.state = TxState.CONFIRMED
                return
        record.state = TxState.MINED

    async def _bump(self, record: TxRecord) -> None:
        if record.bumps >= self.fees.max_bumps:
            return
        factor = 100 + self.fees.bump_percent
        cap = _gwei(self.fees.max_fee_gwei)
        # priced against the pending block: the replacement must beat the base fee of the block it lands in
        current_max, current_priority = await self._fees("pending")
        new_priority = max(record.priority_fee * factor // 100 + 1, current_priority)
        # at least +bump_percent on both fields (replacement rule), and at least what the market asks now
        new_max = min(max(record.max_fee * factor // 100 + 1, current_max, new_priority), cap)
        if new_max <= record.max_fee:
            if not record.error:
                log.warning(
                    "%s stuck at the fee cap (%d wei): raise [chain].max_fee_gwei", record.key, record.max_fee
                )
                record.error = "stuck at the fee cap"
                self.store.put(record)
            return
        record.priority_fee = min(new_priority, new_max)
        record.max_fee = new_max
        record.bumps += 1
        await self._sign(record)
        log.info(
            "%s: no receipt after %.0fs, bumped fees to max %d / tip %d wei (same nonce %d)",
            record.key,
            self.fees.bump_after_s,
            record.max_fee,
            record.priority_fee,
            record.nonce,
        )
        self.store.put(record)
        await self._broadcast(record)

    async def wait(self, key: str, *, timeout: float = 120.0, poll_s: float = 0.5) -> TxRecord:
        """Poll until the keyed tx is confirmed (returned) or reverted/failed (TxFailedError)."""
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            record = self.store.get(key)
            if record is None:
                raise KeyError(key)
            if record.state == TxState.CONFIRMED:
                return record
            if record.state in (TxState.REVERTED, TxState.FAILED):
                raise TxFailedError(record)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key}: not confirmed within {timeout}s (state {record.state.value})")
            await asyncio.sleep(poll_s)
