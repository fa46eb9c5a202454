"""The transaction manager: one nonce sequencer per sending key, EIP-1559 fees, simulation before
sending, receipt tracking, fee bumping of stuck transactions and re-broadcast after a reorg.

Every logical transaction has an idempotency key ("claim:42"). `send` with a key that already
exists returns the existing record instead of sending again, so a restarted node never pays gas
twice for the same claim or result. The record (nonce + signed bytes) is persisted before it is
broadcast, so a crash between the two is recovered by re-broadcasting the same bytes.

The nonce sequence is never wedged: a nonce is taken only together with a persisted record (a failure
before that gives it back); every broadcast error is classified (chain/tx_errors.py) and handled; a tx
that cannot be bumped any more (fee cap, last bump) keeps being re-broadcast; a tx that can no longer
help is replaced by a zero-value self-transfer at its nonce (`cancel`), and so is a gap (`fill_gaps`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import AsyncWeb3
from web3.exceptions import ContractCustomError, ContractLogicError, TransactionNotFound

from chain.errors import describe_revert
from chain.tx_errors import BroadcastError, classify_broadcast_error
from chain.tx_fees import FeePolicy, bumped_fees, gwei, market_fees, replacement_fees
from chain.tx_reorg import TxReorgRepair
from chain.tx_store import TxRecord, TxState, TxStore

log = logging.getLogger("openlora.tx")
__all__ = ["FeePolicy", "SimulationError", "TxFailedError", "TxHealth", "TxManager"]


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
class TxHealth:
    pending: int
    oldest_pending_s: float  # 0 when nothing is pending
    at_cap: int  # pending txs that cannot be bumped further (fee cap or last bump)
    stuck: tuple[str, ...]  # keys of txs pending longer than stuck_after_s or failing to broadcast
    funds_low: str | None  # set while the key cannot pay for gas (the last broadcast said so)


class TxManager(TxReorgRepair):
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
        self._last_poll = float("-inf")  # time.monotonic() of the last receipt pass's start
        self.funds_low: str | None = None
        self.bumps_total = 0
        self.cancels_total = 0
        self.broadcast_errors: Counter[str] = Counter()

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
            return await self._resync_locked()

    async def _resync_locked(self) -> int:
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
        try:
            suggested = int(await self.w3.eth.max_priority_fee)
        except Exception:
            suggested = gwei(1)
        return market_fees(int(block.get("baseFeePerGas", 0)), suggested, self.fees)

    async def send(self, key: str, to: str, data: str, value: int = 0) -> TxRecord:
        """Send once per key. Simulates first (SimulationError: nothing sent). Returns the record. A key
        whose last tx failed, was cancelled or reverted (its nonce used) is sent anew: the caller decided
        that it is worth another try."""
        existing = self.store.get(key)
        if existing is not None and existing.state not in (
            TxState.FAILED,
            TxState.CANCELLED,
            TxState.REVERTED,
        ):
            return existing
        gas = await self.simulate(key, to, data, value)
        max_fee, priority = await self._fees()
        record = await self._persist_new(key, to, data, value, gas, max_fee, priority)
        await self._broadcast(record)
        return record

    async def _persist_new(
        self, key: str, to: str, data: str, value: int, gas: int, max_fee: int, priority: int
    ) -> TxRecord:
        """Take the next nonce and persist the signed record under it, or give the nonce back."""
        async with self._nonce_lock:
            nonce = self._next_nonce if self._next_nonce is not None else await self._resync_locked()
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
            self._next_nonce = nonce + 1
            try:
                await self._sign(record)
                self.store.put(record)  # persisted before broadcast: a crash is recovered by re-broadcast
            except BaseException:
                self._next_nonce = nonce  # nothing persisted, nothing broadcast: the nonce is still free
                raise
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

    async def _broadcast(self, record: TxRecord) -> BroadcastError | None:
        """Send the record's latest bytes; classify and handle a refusal. Returns the error class (None: the
        node has the tx)."""
        kind: BroadcastError | None = None
        try:
            await self.w3.eth.send_raw_transaction(record.raw)
        except Exception as e:
            kind = classify_broadcast_error(e)
            if kind == BroadcastError.ALREADY_KNOWN:
                kind = None
            else:
                self.broadcast_errors[kind.value] += 1
                if record.broadcast_error != kind.value:  # one line per change, not one per retry
                    level = logging.INFO if kind == BroadcastError.NONCE_TOO_LOW else logging.WARNING
                    log.log(level, "broadcast of %s (nonce %d): %s: %s", record.key, record.nonce, kind, e)
        now = time.time()
        if kind == BroadcastError.INSUFFICIENT_FUNDS:
            self.funds_low = (
                f"{self.address} cannot pay for gas (broadcast of {record.key} refused): send ETH to it"
            )
        elif kind is None:
            self.funds_low = None
        record.broadcast_error = kind.value if kind else None
        if record.state == TxState.SIGNED:
            record.state = TxState.SENT
        record.sent_at = now
        record.first_sent_at = record.first_sent_at or now
        self.store.put(record)
        if kind == BroadcastError.FATAL and record.cancel_from is None:
            await self._replace_with_self_transfer(record, f"the RPC will never accept it ({kind})")
        elif kind == BroadcastError.NONCE_TOO_HIGH:
            await self.fill_gaps()
        return kind

    async def recover(self) -> None:
        """After a restart: resync the nonce, fill gaps below it, re-broadcast what was signed but not
        confirmed."""
        await self.resync_nonce()
        await self.fill_gaps()
        for record in self.store.active(self.address):
            if record.state in (TxState.SIGNED, TxState.SENT):
                log.info("re-broadcasting %s (nonce %d) after restart", record.key, record.nonce)
                await self._broadcast(record)

    async def fill_gaps(self) -> list[TxRecord]:
        """A nonce below our next one that no pending tx of ours or in the pool holds would queue every later
        tx behind it forever: fill each with a zero-value self-transfer."""
        pending_count = await self.w3.eth.get_transaction_count(self.address, "pending")
        next_nonce = self._next_nonce if self._next_nonce is not None else await self.resync_nonce()
        held = {r.nonce for r in self.store.active(self.address)}
        filled = []
        for nonce in range(pending_count, next_nonce):
            if nonce in held:
                continue
            log.warning("nonce %d is a gap (no tx holds it): filling it with a self-transfer", nonce)
            max_fee, priority = await self._fees("pending")
            record = TxRecord(
                key=f"fill:{nonce}",
                sender=self.address,
                to=self.address,
                data="0x",
                value=0,
                nonce=nonce,
                gas=21_000,
                max_fee=max_fee,
                priority_fee=priority,
                cancel_from=0,
            )
            await self._sign(record)
            self.store.put(record)
            filled.append(record)
        for record in filled:
            await self._broadcast(record)
        return filled

    async def cancel(self, key: str, reason: str) -> TxRecord | None:
        """The tx behind `key` can no longer help (e.g. a claim for a job a rival took): if it is still
        pending, replace it with a zero-value self-transfer at the same nonce, so it neither reverts (gas
        for nothing) nor holds the nonce. Returns the record (None: unknown key)."""
        async with self._poll_lock:
            record = self.store.get(key)
            if record is None or record.terminal or record.state == TxState.MINED:
                return record
            if record.cancel_from is None:
                await self._replace_with_self_transfer(record, reason)
            return record

    async def _replace_with_self_transfer(self, record: TxRecord, reason: str) -> None:
        max_fee, priority = replacement_fees(record, await self._fees("pending"), self.fees)
        record.to, record.data, record.value, record.gas = self.address, "0x", 0, 21_000
        record.max_fee, record.priority_fee = max_fee, priority
        record.cancel_from = len(record.hashes)
        record.error = f"cancelled: {reason}"
        self.cancels_total += 1
        await self._sign(record)
        log.warning("%s (nonce %d) replaced by a self-transfer: %s", record.key, record.nonce, reason)
        self.store.put(record)
        await self._broadcast(record)

    async def poll(self) -> list[TxRecord]:
        """One pass over in-flight transactions; returns those that changed state."""
        changed: list[TxRecord] = []
        async with self._poll_lock:
            self._last_poll = time.monotonic()
            head = await self.w3.eth.block_number
            for record in self.store.active(self.address):
                before = record.state
                await self._check(record, head)
                if record.state != before:
                    self.store.put(record)
                    changed.append(record)
        return changed

    def health(self, now: float | None = None) -> TxHealth:
        """What readiness and admission ask: is anything of ours pending too long or unable to move?"""
        now = time.time() if now is None else now
        pending = [r for r in self.store.active(self.address) if r.state in (TxState.SIGNED, TxState.SENT)]
        ages = [now - (r.first_sent_at or r.sent_at or now) for r in pending]
        at_cap = [r for r in pending if r.error == "stuck at the fee cap" or r.bumps >= self.fees.max_bumps]
        stuck = tuple(
            r.key
            for r, age in zip(pending, ages, strict=True)
            if age >= self.fees.stuck_after_s
            or r in at_cap
            or r.broadcast_error in (BroadcastError.UNDERPRICED, BroadcastError.INSUFFICIENT_FUNDS)
        )
        return TxHealth(len(pending), max(ages, default=0.0), len(at_cap), stuck, self.funds_low)

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
            else:
                await self._nudge(record)
                return
        record.mined_block = receipt["blockNumber"]
        record.mined_block_hash = receipt["blockHash"].to_0x_hex()
        record.mined_hash = receipt["transactionHash"].to_0x_hex()
        record.gas_used = receipt["gasUsed"]
        record.effective_gas_price = receipt.get("effectiveGasPrice")
        cancelled = record.cancel_from is not None and record.hashes.index(record.mined_hash) >= (
            record.cancel_from
        )
        if receipt["status"] != 1:
            record.state, record.error = TxState.REVERTED, "reverted on chain"
            return
        if head - record.mined_block + 1 >= self.confirmations:
            block = await self.w3.eth.get_block(record.mined_block)
            if block["hash"].to_0x_hex() == record.mined_block_hash:
                record.state = TxState.CANCELLED if cancelled else TxState.CONFIRMED
                return
        record.state = TxState.MINED

    async def _nudge(self, record: TxRecord) -> None:
        """A pending tx without a receipt: bump it when it has waited long enough (or was refused as
        underpriced), else re-broadcast the same bytes (dropped from a pool, refused for a transient reason,
        or past its last bump): nothing ever just sits."""
        waited = time.time() - record.sent_at
        error = record.broadcast_error
        underpriced = error in (BroadcastError.UNDERPRICED, BroadcastError.REPLACEMENT_UNDERPRICED)
        if error is not None and waited < self.fees.retry_s:
            return
        if error is None and waited < self.fees.bump_after_s:
            return
        if (error is None or underpriced) and await self._bump(record):
            return
        await self._broadcast(record)

    async def _bump(self, record: TxRecord) -> bool:
        """Replace with higher fees at the same nonce; False when it cannot go higher (cap, last bump)."""
        if record.bumps >= self.fees.max_bumps:
            return False
        # priced against the pending block: the replacement must beat the base fee of the block it lands in
        new_max, new_priority = bumped_fees(record, await self._fees("pending"), self.fees)
        if new_max <= record.max_fee:
            if record.error != "stuck at the fee cap":
                log.warning(
                    "%s stuck at the fee cap (%d wei): re-broadcasting it until fees fall; raise "
                    "[chain].max_fee_gwei to get it mined sooner",
                    record.key,
                    record.max_fee,
                )
                record.error = "stuck at the fee cap"
                self.store.put(record)
            return False
        record.priority_fee = new_priority
        record.max_fee = new_max
        record.bumps += 1
        self.bumps_total += 1
        if record.error == "stuck at the fee cap":
            record.error = None
        await self._sign(record)
        log.info(
            "%s: no receipt after %.0fs, bumped fees to max %d / tip %d wei (same nonce %d)",
            record.key,
            time.time() - record.sent_at,
            record.max_fee,
            record.priority_fee,
            record.nonce,
        )
        self.store.put(record)
        await self._broadcast(record)
        return True

    async def wait(self, key: str, *, timeout: float = 120.0, poll_s: float = 0.1) -> TxRecord:
        """Poll until the keyed tx is confirmed (returned) or reverted/failed/cancelled (TxFailedError).
        Concurrent waiters share one receipt pass per `poll_s` (a pass checks every pending tx)."""
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() - self._last_poll >= poll_s:
                await self.poll()
            record = self.store.get(key)
            if record is None:
                raise KeyError(key)
            if record.state == TxState.CONFIRMED:
                return record
            if record.state in (TxState.REVERTED, TxState.FAILED, TxState.CANCELLED):
                raise TxFailedError(record)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key}: not confirmed within {timeout}s (state {record.state.value})")
            await asyncio.sleep(poll_s)
