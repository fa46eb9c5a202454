"""The event watcher against a real Anvil and the real contracts: cursor, confirmations, reorgs."""

from __future__ import annotations

from pathlib import Path

from eth_account import Account
from web3 import AsyncHTTPProvider, AsyncWeb3, HTTPProvider, Web3

from chain.client import ProtocolClient
from chain.deployment import deploy
from chain.devnet import Anvil
from chain.protocol import Protocol
from chain.watcher import CursorStore, EventWatcher
from node.jobs import connect


async def _drain(watcher: EventWatcher) -> list:
    events = []
    while (batch := await watcher.next_batch()) is not None:
        events += batch.events
        watcher.commit(batch)
    return events


async def test_cursor_resumes_and_confirmations_hold_back_the_head(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        aw3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
        protocol = Protocol(aw3, deployment)
        db = tmp_path / "db"

        watcher = EventWatcher(
            aw3,
            protocol.contracts,
            CursorStore(connect(db)),
            start_block=deployment.start_block,
            confirmations=2,
        )
        w3.provider.make_request("anvil_mine", [1])
        assert "OwnershipTransferred" in [e.name for e in await _drain(watcher)]  # the deployment itself
        publisher.register_adapter("bafyone", b"\x01" * 32, b"\x02" * 32, 4, 100, 1)
        # the registration's block is the head: one confirmation only, so it is held back
        assert [e.name for e in await _drain(watcher)] == []
        w3.provider.make_request("anvil_mine", [1])
        events = await _drain(watcher)
        assert [e.name for e in events] == ["AdapterRegistered"]
        assert events[0].args["cid"] == "bafyone"

        publisher.register_adapter("bafytwo", b"\x03" * 32, b"\x02" * 32, 4, 100, 1)
        w3.provider.make_request("anvil_mine", [1])
        # a restarted watcher (new object, same database) resumes after the cursor: no re-delivery
        again = EventWatcher(
            aw3,
            protocol.contracts,
            CursorStore(connect(db)),
            start_block=deployment.start_block,
            confirmations=2,
        )
        assert [e.args["cid"] for e in await _drain(again)] == ["bafytwo"]
        await aw3.provider.disconnect()


async def test_reorg_is_detected_and_the_dropped_range_is_re_read(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        aw3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
        watcher = EventWatcher(
            aw3,
            Protocol(aw3, deployment).contracts,
            CursorStore(connect(tmp_path / "db")),
            start_block=deployment.start_block,
            confirmations=1,
        )
        publisher.register_adapter("bafykept", b"\x01" * 32, b"\x02" * 32, 4, 100, 1)
        publisher.register_adapter("bafydropped", b"\x03" * 32, b"\x02" * 32, 4, 100, 1)
        seen = [e for e in await _drain(watcher) if e.name == "AdapterRegistered"]
        assert [e.args["cid"] for e in seen] == ["bafykept", "bafydropped"]
        dropped_block = seen[1].block_number

        # replace the last block (the one holding "bafydropped") with an empty one
        w3.provider.make_request("anvil_reorg", [1, []])
        batch = await watcher.next_batch()
        assert batch is not None and batch.reorg_from is not None and batch.reorg_from <= dropped_block
        watcher.commit(batch)
        assert "bafydropped" not in [e.args.get("cid") for e in batch.events + await _drain(watcher)]
        await aw3.provider.disconnect()


async def test_deep_reorg_walks_back_through_checkpoints_and_re_reads_replacements(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    """Three batches of one block each, then a 3-block reorg whose new blocks hold a different event:
    the watcher finds the last common checkpoint, reports where to re-read from and delivers the new event."""
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        aw3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
        watcher = EventWatcher(
            aw3,
            Protocol(aw3, deployment).contracts,
            CursorStore(connect(tmp_path / "db")),
            start_block=deployment.start_block,
            confirmations=1,
        )
        await _drain(watcher)
        common = w3.eth.block_number
        for cid in ("bafy-a", "bafy-b", "bafy-c"):  # one block and one committed batch each
            publisher.register_adapter(cid, b"\x01" * 32, b"\x02" * 32, 4, 100, 1)
            await _drain(watcher)
        # the replacement chain: 3 new blocks, the first holding another registration
        registry = publisher.adapters
        tx = registry.functions.register("bafy-new", b"\x05" * 32, b"\x02" * 32, 4, 100, 1).build_transaction(
            {
                "from": publisher.account.address,
                "nonce": w3.eth.get_transaction_count(publisher.account.address) - 3,
                "gas": 500_000,
                "maxFeePerGas": 10**11,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        raw = publisher.account.sign_transaction(tx).raw_transaction.to_0x_hex()
        w3.provider.make_request("anvil_reorg", [3, [[raw, 0]]])
        batch = await watcher.next_batch()
        assert batch is not None and batch.reorg_from == common + 1
        cids = [e.args.get("cid") for e in batch.events]
        watcher.commit(batch)
        cids += [e.args.get("cid") for e in await _drain(watcher)]
        assert "bafy-new" in cids and not {"bafy-a", "bafy-b", "bafy-c"} & set(cids)
        await aw3.provider.disconnect()


async def test_a_refused_log_range_is_read_in_parts_and_loses_nothing(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    """A provider capping results makes the watcher read a shorter range: the batch ends where the read
    ended (a batch claiming the whole range would skip the rest of its events)."""
    from tests.rpc_proxy import ProviderLimits, RpcProxy

    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        for i in range(30):
            publisher.register_adapter(f"bafy{i}", bytes([i + 1]) * 32, b"\x02" * 32, 4, 100, 1)
        proxy = RpcProxy(anvil.url, ProviderLimits(max_log_results=7, max_log_blocks=20))
        aw3 = AsyncWeb3(AsyncHTTPProvider(await proxy.start()))
        watcher = EventWatcher(
            aw3,
            Protocol(aw3, deployment).contracts,
            CursorStore(connect(tmp_path / "db")),
            start_block=deployment.start_block,
            max_range=1000,
        )
        events = await _drain(watcher)
        cids = [e.args["cid"] for e in events if e.name == "AdapterRegistered"]
        assert cids == [f"bafy{i}" for i in range(30)]  # every event, once, in order
        assert watcher.range.shrinks > 0 and proxy.refused > 0
        assert max(b - a + 1 for a, b in proxy.get_logs_ranges) <= 20
        await aw3.provider.disconnect()
        await proxy.stop()


async def test_finalized_tag_holds_back_what_the_chain_has_not_finalized(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    with Anvil(extra_args=["--slots-in-an-epoch", "4"]) as anvil:  # finalized = a few epochs behind head
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        aw3 = AsyncWeb3(AsyncHTTPProvider(anvil.url))
        watcher = EventWatcher(
            aw3,
            Protocol(aw3, deployment).contracts,
            CursorStore(connect(tmp_path / "db")),
            start_block=deployment.start_block,
            head_tag="finalized",
        )
        publisher.register_adapter("bafyfinal", b"\x07" * 32, b"\x02" * 32, 4, 100, 1)
        registered_at = w3.eth.block_number
        assert w3.eth.get_block("finalized")["number"] < registered_at
        assert "AdapterRegistered" not in [e.name for e in await _drain(watcher)]
        w3.provider.make_request("anvil_mine", [40])
        assert w3.eth.get_block("finalized")["number"] >= registered_at
        assert [e.args["cid"] for e in await _drain(watcher) if e.name == "AdapterRegistered"] == [
            "bafyfinal"
        ]
        await aw3.provider.disconnect()


def test_log_range_follows_what_providers_say_and_grows_back() -> None:
    from chain.log_range import AdaptiveRange, is_range_refusal

    r = AdaptiveRange(2000, grow_after=2)
    r.refused(ValueError("exceed maximum block range: 500"), 100, 2000)  # geth
    assert r.size == 500
    r.refused(
        ValueError("query returned more than 10000 results. Try with this block range [0x64, 0x95]."),
        100,
        500,
    )
    assert r.size == 50  # Infura's suggestion, exactly
    r.refused(ValueError("413 Request Entity Too Large"), 100, 50)
    assert r.size == 25  # no hint: halved
    for _ in range(6):
        r.succeeded()
    assert r.size == 200  # doubles after every 2 successes, never above the maximum
    assert is_range_refusal(
        ValueError("Log response size exceeded. ... this block range should work: [0x1, 0x2]")
    )
    assert not is_range_refusal(ValueError("execution reverted"))


async def test_a_log_range_that_times_out_shrinks_until_it_answers(
    tmp_path: Path, dev_keys: list[str]
) -> None:
    """A provider that cannot answer large ranges in time (no message, just a timeout) is not retried with
    the same range forever: each timeout halves it, until the reads go through."""
    import pytest

    from tests.rpc_proxy import ProviderLimits, RpcProxy

    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_keys[0]))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_keys[2]))
        publisher.register_adapter("bafyslow", b"\x09" * 32, b"\x02" * 32, 4, 100, 1)
        w3.provider.make_request("anvil_mine", [400])
        proxy = RpcProxy(anvil.url, ProviderLimits(slow_log_blocks=60, timeout_s=0.3))
        aw3 = AsyncWeb3(AsyncHTTPProvider(await proxy.start(), request_kwargs={"timeout": 5}))
        watcher = EventWatcher(
            aw3,
            Protocol(aw3, deployment).contracts,
            CursorStore(connect(tmp_path / "db")),
            start_block=deployment.start_block,
            max_range=2000,
        )
        events, failures = [], 0
        while failures < 20:
            try:
                batch = await watcher.next_batch()
            except Exception:
                failures += 1
                continue
            if batch is None:
                break
            events += batch.events
            watcher.commit(batch)
        assert [e.args["cid"] for e in events if e.name == "AdapterRegistered"] == ["bafyslow"]
        assert 0 < failures <= 6 and watcher.range.shrinks == failures  # each timeout halved the range once
        assert pytest.approx(0) == watcher.rewinds
        await aw3.provider.disconnect()
        await proxy.stop()
