"""The transaction manager against a real Anvil: idempotency, nonces, fee bumping, restart recovery."""

from __future__ import annotations

import pytest
from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3

from chain.devnet import Anvil
from chain.tx import FeePolicy, TxManager
from chain.tx_store import SqliteTxStore, TxState
from node.jobs import connect


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


def _manager(url: str, key: str, db, **fees) -> TxManager:
    w3 = AsyncWeb3(AsyncHTTPProvider(url))
    _OPEN.append(w3)
    return TxManager(
        w3, Account.from_key(key), SqliteTxStore(connect(db)), fees=FeePolicy(**fees), confirmations=1
    )


async def test_send_is_idempotent_and_nonces_sequence(chain: Anvil, dev_keys: list[str], tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    to = Account.from_key(dev_keys[1]).address
    first = await tm.send("pay:1", to, "0x", value=1)
    again = await tm.send("pay:1", to, "0x", value=1)
    second = await tm.send("pay:2", to, "0x", value=2)
    assert first.nonce == again.nonce and second.nonce == first.nonce + 1
    r1 = await tm.wait("pay:1", timeout=20)
    r2 = await tm.wait("pay:2", timeout=20)
    assert r1.state == r2.state == TxState.CONFIRMED
    assert await tm.w3.eth.get_transaction_count(tm.address) == 2  # the repeated key sent nothing


async def test_stuck_tx_is_bumped_with_the_same_nonce(chain: Anvil, dev_keys: list[str], tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db", bump_after_s=0.0)
    w3 = tm.w3
    await w3.provider.make_request("evm_setAutomine", [False])
    to = Account.from_key(dev_keys[1]).address
    record = await tm.send("pay:stuck", to, "0x", value=5)
    await tm.poll()  # no receipt and bump_after_s elapsed: replace with higher fees
    bumped = tm.store.get("pay:stuck")
    assert bumped.bumps == 1 and len(bumped.hashes) == 2 and bumped.nonce == record.nonce
    assert bumped.max_fee > record.max_fee and bumped.priority_fee > record.priority_fee
    await w3.provider.make_request("evm_mine", [])
    await w3.provider.make_request("evm_setAutomine", [True])
    done = await tm.wait("pay:stuck", timeout=20)
    assert done.mined_hash == bumped.hashes[-1]  # the replacement was mined, the original never
    assert await w3.eth.get_transaction_count(tm.address) == 1


async def test_restart_rebroadcasts_signed_but_unsent(chain: Anvil, dev_keys: list[str], tmp_path) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    w3 = tm.w3
    await w3.provider.make_request("evm_setAutomine", [False])
    to = Account.from_key(dev_keys[1]).address
    await tm.send("pay:crash", to, "0x", value=7)
    # simulate a crash that lost the mempool: drop the tx from Anvil's pool
    await w3.provider.make_request("anvil_dropAllTransactions", [])
    await w3.provider.make_request("evm_setAutomine", [True])
    restarted = _manager(chain.url, dev_keys[0], tmp_path / "db")
    await restarted.recover()
    done = await restarted.wait("pay:crash", timeout=20)
    assert done.state == TxState.CONFIRMED
    assert await w3.eth.get_transaction_count(tm.address) == 1


async def test_tx_underpriced_by_a_base_fee_jump_is_bumped_and_mined(
    chain: Anvil, dev_keys: list[str], tmp_path
) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db", bump_after_s=0.0)
    w3 = tm.w3
    await w3.provider.make_request("evm_setAutomine", [False])
    to = Account.from_key(dev_keys[1]).address
    record = await tm.send("pay:underpriced", to, "0x", value=3)
    # the base fee jumps far above the tx's maxFeePerGas: it sits in the pool, unmineable
    await w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(100 * 10**9)])
    await w3.provider.make_request("evm_mine", [])
    assert await w3.eth.get_transaction_count(tm.address) == 0
    await tm.poll()
    bumped = tm.store.get("pay:underpriced")
    assert bumped.nonce == record.nonce and bumped.bumps == 1
    assert bumped.max_fee >= 2 * 10**9 * 10  # priced against the pending block, not +15% of a stale price
    await w3.provider.make_request("evm_setAutomine", [True])
    await w3.provider.make_request("evm_mine", [])
    done = await tm.wait("pay:underpriced", timeout=20)
    assert done.mined_hash == bumped.hashes[-1] and await w3.eth.get_transaction_count(tm.address) == 1


async def test_reorg_that_drops_mined_txs_resends_the_same_bytes_in_nonce_order(
    chain: Anvil, dev_keys: list[str], tmp_path
) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    to = Account.from_key(dev_keys[1]).address
    await tm.send("pay:a", to, "0x", value=1)
    await tm.send("pay:b", to, "0x", value=2)
    a, b = await tm.wait("pay:a", timeout=20), await tm.wait("pay:b", timeout=20)
    await tm.w3.provider.make_request("anvil_reorg", [2, []])
    assert await tm.w3.eth.get_transaction_count(tm.address) == 0
    resent = await tm.reconcile_reorg(a.mined_block)
    assert [r.key for r in resent] == ["pay:a", "pay:b"]
    again_a, again_b = await tm.wait("pay:a", timeout=20), await tm.wait("pay:b", timeout=20)
    assert (again_a.mined_hash, again_b.mined_hash) == (a.mined_hash, b.mined_hash)  # same signed txs
    assert await tm.w3.eth.get_transaction_count(tm.address) == 2
    assert await tm.reconcile_reorg(again_a.mined_block) == []  # nothing dropped: nothing re-sent


async def test_confirmed_tx_dropped_by_a_deep_reorg_is_found_until_finality(
    chain: Anvil, dev_keys: list[str], tmp_path
) -> None:
    tm = _manager(chain.url, dev_keys[0], tmp_path / "db")
    to = Account.from_key(dev_keys[1]).address
    await tm.send("pay:deep", to, "0x", value=3)
    settled = await tm.wait("pay:deep", timeout=20)
    await tm.w3.provider.make_request("anvil_mine", [3])  # now 4 blocks deep: far past confirmations=1
    assert await tm.find_dropped(finality_blocks=64) is None  # still canonical: nothing to repair
    assert settled.state == TxState.CONFIRMED
    depth = await tm.w3.eth.block_number - settled.mined_block + 1
    await tm.w3.provider.make_request("anvil_reorg", [depth, []])  # replaced down to our block, by empty ones
    assert await tm.find_dropped(finality_blocks=2) is None  # older than the finality window: not checked
    dropped_from = await tm.find_dropped(finality_blocks=64)
    assert dropped_from == settled.mined_block
    resent = await tm.reconcile_reorg(dropped_from)
    assert [r.key for r in resent] == ["pay:deep"]
    again = await tm.wait("pay:deep", timeout=20)
    assert again.mined_hash == settled.mined_hash and again.mined_block_hash != settled.mined_block_hash
    assert await tm.find_dropped(finality_blocks=64) is None
    assert await tm.w3.eth.get_transaction_count(tm.address) == 1


def test_store_written_before_the_mined_block_column_is_migrated(tmp_path) -> None:
    import json
    import sqlite3

    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute(
        "CREATE TABLE txs (key TEXT PRIMARY KEY, sender TEXT NOT NULL, nonce INTEGER NOT NULL,"
        " state TEXT NOT NULL, body TEXT NOT NULL)"
    )
    body = {
        "key": "claim:1",
        "sender": "0xabc",
        "to": "0xdef",
        "data": "0x",
        "value": 0,
        "nonce": 0,
        "gas": 1,
        "max_fee": 1,
        "priority_fee": 1,
        "state": "confirmed",
        "mined_block": 12,
        "mined_block_hash": "0x12",
    }
    conn.execute(
        "INSERT INTO txs VALUES (?, ?, ?, ?, ?)", ("claim:1", "0xabc", 0, "confirmed", json.dumps(body))
    )
    conn.commit()
    store = SqliteTxStore(conn)
    assert [r.key for r in store.mined_since("0xabc", 12)] == ["claim:1"]
    assert store.mined_since("0xabc", 13) == []
