"""Transaction wedges against a real Anvil: whatever goes wrong, the next transactions mine within a few
blocks and no nonce is skipped (chain/tx.py, chain/tx_errors.py)."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.exceptions import TransactionNotFound

from chain.devnet import Anvil
from chain.tx import FeePolicy, TxManager
from chain.tx_errors import BroadcastError, classify_broadcast_error
from chain.tx_store import SqliteTxStore, TxState
from node.jobs import connect

GWEI = 10**9


@pytest.fixture()
def chain():
    with Anvil() as a:
        yield a


_OPEN: list[AsyncWeb3] = []


@pytest.fixture(autouse=True)
async def _close_providers():
    yield
    while _OPEN:
        await _OPEN.pop().provider.disconnect()


class FlakyStore(SqliteTxStore):
    """The real SQLite store, whose next `fail_puts` writes raise as a full disk would."""

    fail_puts = 0

    def put(self, record) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            raise OSError(28, "No space left on device")
        super().put(record)


def _manager(url: str, key: str, db, store_cls=SqliteTxStore, **fees) -> TxManager:
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    _OPEN.append(w3)
    return TxManager(w3, Account.from_key(key), store_cls(connect(db)), fees=FeePolicy(**fees))


async def _rpc(tm: TxManager, method: str, *params):
    return await tm.w3.provider.make_request(method, list(params))


async def _nonces_mined(tm: TxManager) -> list[int]:
    """Nonces of our mined txs, from the chain's blocks (what actually happened, not the store)."""
    head = await tm.w3.eth.block_number
    out = []
    for n in range(head + 1):
        block = await tm.w3.eth.get_block(n, full_transactions=True)
        out += [t["nonce"] for t in block["transactions"] if t["from"] == tm.address]
    return out


async def test_store_failure_after_taking_a_nonce_gives_it_back(chain, dev_keys, tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db", store_cls=FlakyStore)
    to = Account.from_key(dev_keys[1]).address
    tm.store.fail_puts = 1
    with pytest.raises(OSError, match="No space"):
        await tm.send("pay:1", to, "0x", value=1)
    assert tm.store.get("pay:1") is None  # nothing persisted, nothing broadcast
    second = await tm.send("pay:2", to, "0x", value=2)
    first = await tm.send("pay:1", to, "0x", value=1)
    assert (second.nonce, first.nonce) == (0, 1)  # the failed attempt's nonce was given back
    await tm.wait("pay:2", timeout=20)
    await tm.wait("pay:1", timeout=20)
    assert await _nonces_mined(tm) == [0, 1]


async def test_dropped_tx_past_its_last_bump_is_rebroadcast(chain, dev_keys, tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db", bump_after_s=0.0, max_bumps=0)
    to = Account.from_key(dev_keys[1]).address
    await _rpc(tm, "evm_setAutomine", False)
    record = await tm.send("pay:dropped", to, "0x", value=5)
    await _rpc(tm, "anvil_dropTransaction", record.hashes[-1])
    await _rpc(tm, "evm_setAutomine", True)
    await _rpc(tm, "evm_mine")
    assert await tm.w3.eth.get_transaction_count(tm.address) == 0  # gone from the pool, not mined
    done = await tm.wait("pay:dropped", timeout=20)  # no bump allowed: the same bytes are re-broadcast
    assert done.state == TxState.CONFIRMED and done.bumps == 0 and done.mined_hash == record.hashes[0]
    nxt = await tm.send("pay:next", to, "0x", value=1)
    await tm.wait("pay:next", timeout=20)
    assert nxt.nonce == 1 and await _nonces_mined(tm) == [0, 1]


async def test_fee_cap_below_base_fee_for_20_blocks_then_above(chain, dev_keys, tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db", bump_after_s=0.0, retry_s=0.0, max_fee_gwei=3.0)
    to = Account.from_key(dev_keys[1]).address
    other = Account.from_key(dev_keys[2])
    await _rpc(tm, "anvil_setNextBlockBaseFeePerGas", hex(40 * GWEI))
    await _rpc(tm, "evm_mine")  # base fee 40 gwei, decaying 12.5% a block: above the 3 gwei cap ~20 blocks
    record = await tm.send("pay:capped", to, "0x", value=7)
    assert record.max_fee <= 3 * GWEI
    above = 0
    for _ in range(40):
        block = await tm.w3.eth.get_block("pending")  # the base fee the next block will charge
        if block["baseFeePerGas"] <= 3 * GWEI:
            break
        above += 1
        await tm.poll()
        health = tm.health()
        assert "pay:capped" in health.stuck and health.at_cap == 1  # readiness and admission see it
        assert await tm.w3.eth.get_transaction_count(tm.address) == 0  # not minable above the cap
        # someone else's tx mines a block (the chain goes on without us)
        tx = {
            "to": to,
            "value": 1,
            "gas": 21000,
            "maxFeePerGas": 100 * GWEI,
            "maxPriorityFeePerGas": 1,
            "nonce": await tm.w3.eth.get_transaction_count(other.address),
            "chainId": 31337,
        }
        await tm.w3.eth.send_raw_transaction(other.sign_transaction(tx).raw_transaction)
    assert above >= 18
    fell_at = await tm.w3.eth.block_number
    done = await tm.wait("pay:capped", timeout=30)
    assert done.state == TxState.CONFIRMED and done.mined_block <= fell_at + 2  # within a few blocks
    nxt = await tm.send("pay:after", to, "0x", value=1)
    await tm.wait("pay:after", timeout=20)
    assert nxt.nonce == 1 and await _nonces_mined(tm) == [0, 1]
    assert tm.health().stuck == ()


async def test_pointless_tx_is_replaced_by_a_self_transfer(chain, dev_keys, tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    to = Account.from_key(dev_keys[1]).address
    await _rpc(tm, "evm_setAutomine", False)
    record = await tm.send("claim:7", to, "0x", value=9)
    cancelled = await tm.cancel("claim:7", "job 7 was claimed by a rival")
    assert cancelled.nonce == record.nonce and cancelled.cancel_from == 1 and len(cancelled.hashes) == 2
    await _rpc(tm, "evm_setAutomine", True)
    await _rpc(tm, "evm_mine")
    with pytest.raises(Exception, match="cancelled"):
        await tm.wait("claim:7", timeout=20)
    final = tm.store.get("claim:7")
    assert final.state == TxState.CANCELLED and final.mined_hash == final.hashes[1]
    tx = await tm.w3.eth.get_transaction(final.mined_hash)
    assert tx["to"] == tm.address and tx["value"] == 0  # nothing paid to anyone but gas
    nxt = await tm.send("pay:next", to, "0x", value=1)
    await tm.wait("pay:next", timeout=20)
    assert nxt.nonce == 1 and await _nonces_mined(tm) == [0, 1]


async def test_gap_below_the_next_nonce_is_filled(chain, dev_keys, tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    to = Account.from_key(dev_keys[1]).address
    await _rpc(tm, "evm_setAutomine", False)
    lost = await tm.send("pay:lost", to, "0x", value=1)
    later = await tm.send("pay:later", to, "0x", value=2)
    # nonce 0 vanishes from pool and books (an older node version gave it up): nonce 1 queues behind a gap
    await _rpc(tm, "anvil_dropTransaction", lost.hashes[-1])
    lost.state = TxState.FAILED
    tm.store.put(lost)
    await _rpc(tm, "evm_setAutomine", True)
    await _rpc(tm, "evm_mine")
    assert await tm.w3.eth.get_transaction_count(tm.address) == 0
    restarted = _manager(chain.url, dev_keys[0], tmp_path / "db")
    await restarted.recover()
    filler = restarted.store.get("fill:0")
    assert filler is not None and filler.nonce == 0
    await restarted.wait("pay:later", timeout=20)
    assert later.nonce == 1 and await _nonces_mined(restarted) == [0, 1]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "{'code': -32000, 'message': 'nonce too low: next nonce 5, tx nonce 3'}",
            BroadcastError.NONCE_TOO_LOW,
        ),
        ("{'code': -32000, 'message': 'already known'}", BroadcastError.ALREADY_KNOWN),
        (
            "{'code': -32000, 'message': 'replacement transaction underpriced'}",
            BroadcastError.REPLACEMENT_UNDERPRICED,
        ),
        (
            "{'code': -32003, 'message': 'max fee per gas less than block base fee: address 0x.., "
            "maxFeePerGas: 1, baseFee: 7'}",
            BroadcastError.UNDERPRICED,
        ),
        (
            "{'code': -32003, 'message': 'insufficient funds for gas * price + value: have 0 want 10'}",
            BroadcastError.INSUFFICIENT_FUNDS,
        ),
        ("{'code': -32000, 'message': 'txpool is full'}", BroadcastError.TXPOOL_FULL),
        ("429 Client Error: Too Many Requests for url: https://rpc.example", BroadcastError.TXPOOL_FULL),
        ("{'code': -32000, 'message': 'nonce too high'}", BroadcastError.NONCE_TOO_HIGH),
        ("{'code': -32000, 'message': 'invalid sender'}", BroadcastError.FATAL),
        ("{'code': -32000, 'message': 'something new'}", BroadcastError.OTHER),
    ],
)
def test_broadcast_errors_are_classified(message: str, kind: BroadcastError) -> None:
    assert classify_broadcast_error(ValueError(message)) == kind


def test_transport_failures_are_transport() -> None:
    assert classify_broadcast_error(TimeoutError("read timed out")) == BroadcastError.TRANSPORT
    assert classify_broadcast_error(ConnectionRefusedError(111, "refused")) == BroadcastError.TRANSPORT


async def test_claim_made_pointless_by_a_rival_is_replaced_not_mined(tmp_path, tiny) -> None:
    """The daemon's claim sits in the pool (underpriced for a moment) when a rival's claim lands: the node
    replaces its claim with a self-transfer at the same nonce instead of letting it revert for gas."""
    import asyncio

    from chain.devnet import dev_private_key
    from inference.models import tiny_llama
    from node.jobs import JobBook, JobState
    from tests.factories import make_peft_adapter
    from tests.stack import STAKE, protocol_stack, running_node, send

    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=6)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        rival = Account.from_key(dev_private_key(4))
        registry = s.contract("NodeRegistry")
        model = registry.functions.getNode(s.operator.address).call()[1]
        send(s.w3, rival, registry.functions.register(rival.address, model, "12D3KooWRival"), value=STAKE)
        market = s.contract("JobMarket")
        config = s.node_config(chain={"max_fee_gwei": 2.0, "max_priority_fee_gwei": 1.0})
        book = JobBook(connect(config.db_path))
        rpc = s.w3.provider.make_request
        async with running_node(config, tiny_llama(0)):
            await asyncio.to_thread(rpc, "evm_setAutomine", [False])
            job_id = market.functions.jobCount().call() + 1
            deadline = s.w3.eth.get_block("latest")["timestamp"] + 600
            s.send_submit(adapter_id, b"contested", 8, deadline)
            await asyncio.to_thread(rpc, "evm_mine", [])
            ours = None
            for _ in range(200):  # our claim reaches the pool
                ours = book.get(job_id)
                if ours is not None and ours.claim_tx:
                    break
                await asyncio.sleep(0.05)
            assert ours is not None and ours.claim_tx
            # the base fee jumps above our cap for a moment; the rival pays more and lands first
            await asyncio.to_thread(rpc, "anvil_setNextBlockBaseFeePerGas", [hex(3 * GWEI)])
            claim = market.functions.claimJob(s.terms(job_id).claim_key()).build_transaction(
                {
                    "from": rival.address,
                    "gas": 300_000,
                    "maxFeePerGas": 50 * GWEI,
                    "maxPriorityFeePerGas": GWEI,
                    "nonce": s.w3.eth.get_transaction_count(rival.address),
                }
            )
            claim_hash = s.w3.eth.send_raw_transaction(rival.sign_transaction(claim).raw_transaction)
            await asyncio.to_thread(rpc, "evm_mine", [])
            assert s.status(job_id) == 2 and s.w3.eth.get_transaction_receipt(claim_hash)["status"] == 1
            await asyncio.to_thread(rpc, "evm_setAutomine", [True])
            record = None
            for _ in range(300):  # fees fall; the replacement mines in place of our claim
                await asyncio.to_thread(rpc, "evm_mine", [])
                rec = SqliteTxStore(connect(config.db_path)).get(ours.claim_key)
                if rec is not None and rec.state == TxState.CANCELLED:
                    record = rec
                    break
                await asyncio.sleep(0.1)
            assert record is not None and getattr(record, "state", None) == TxState.CANCELLED
            assert book.get(job_id).state == JobState.LOST
        mined = s.w3.eth.get_transaction(record.mined_hash)
        assert mined["to"] == s.operator.address and mined["value"] == 0  # a self-transfer, not the claim
        for h in record.hashes[: record.cancel_from]:  # our claim bytes were never mined (no revert, no gas)
            with pytest.raises(TransactionNotFound):
                s.w3.eth.get_transaction_receipt(h)
