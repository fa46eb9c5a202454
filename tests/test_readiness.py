"""/readyz flips to not-ready and back for each cause, saying which; the systemd watchdog is fed over a
real unix datagram socket only while the daemon's loops make progress; one daemon per data folder."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession
from web3 import Web3

from inference.models import LoadedModel, tiny_llama
from node.api import start_api
from node.cli import main as cli_main
from node.errors import StartupError
from node.runtime import build_daemon, run_node
from tests.factories import make_peft_adapter
from tests.rpc_proxy import RpcProxy
from tests.stack import protocol_stack, running_node, send


async def _readyz(url: str) -> tuple[int, dict]:
    async with ClientSession() as http, http.get(f"{url}/readyz") as r:
        return r.status, await r.json()


async def _until(url: str, *, ready: bool, cause: str | None = None, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = await _readyz(url)
        if ready and status == 200 and body["ready"]:
            return body
        if not ready and status == 503 and cause in body["reasons"]:
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"/readyz never {'ready' if ready else 'not ready for ' + str(cause)}: {body}")


@contextlib.asynccontextmanager
async def _daemon(config, base):
    daemon = await build_daemon(config, base=base)
    runner = await start_api(daemon, config.api.host, config.api.port)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield daemon, f"http://{config.api.host}:{config.api.port}"
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
        await runner.cleanup()
        await daemon.service.store.close()
        await daemon.w3.provider.disconnect()


def _rpc(s, method: str, *params):
    return s.w3.provider.make_request(method, list(params))


async def test_readyz_flips_for_each_cause_and_back(tmp_path: Path, tiny: LoadedModel) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=9)
    async with protocol_stack(tmp_path) as s:
        adapter_id, _ = s.publish(adapter_dir, tiny)
        s.register_node(tiny)
        proxy = RpcProxy(s.anvil.url)
        config = s.node_config(
            chain={"rpc_urls": [await proxy.start()], "stuck_after_s": 1.0, "rpc_timeout_s": 2.0},
            health={"check_interval_s": 0.2, "max_watcher_lag_blocks": 50},
        )
        try:
            async with _daemon(config, tiny_llama(0)) as (daemon, url):
                await _until(url, ready=True)
                assert (await _readyz(url))[1]["reasons"] == {}

                proxy.limits.down = True  # the RPC is unreachable
                body = await _until(url, ready=False, cause="rpc")
                assert "RPC unreachable" in body["reasons"]["rpc"]
                proxy.limits.down = False
                await _until(url, ready=True)

                proxy.limits.syncing = True  # reachable but still syncing
                await _until(url, ready=False, cause="sync")
                proxy.limits.syncing = False
                await _until(url, ready=True)

                proxy.limits.fail_methods = {"eth_getLogs"}  # the watcher cannot read while blocks go on
                await asyncio.to_thread(_rpc, s, "anvil_mine", 60)
                body = await _until(url, ready=False, cause="watcher")
                assert "blocks behind" in body["reasons"]["watcher"]
                proxy.limits.fail_methods = set()
                await _until(url, ready=True)

                # a transaction of ours stuck in the pool
                await asyncio.to_thread(_rpc, s, "evm_setAutomine", False)
                market = s.contract("JobMarket")
                deadline = s.w3.eth.get_block("latest")["timestamp"] + 600
                s.send_submit(adapter_id, b"hold me", 8, deadline)
                await asyncio.to_thread(_rpc, s, "evm_mine")  # the job lands; our claim will sit pending
                body = await _until(url, ready=False, cause="tx")
                assert "claims:" in body["reasons"]["tx"]
                await asyncio.to_thread(_rpc, s, "evm_setAutomine", True)
                await asyncio.to_thread(_rpc, s, "evm_mine")
                await s.wait_result(market.functions.jobCount().call())
                await _until(url, ready=True)

                # too little ETH for the next jobs' gas
                balance = s.w3.eth.get_balance(s.operator.address)
                await asyncio.to_thread(_rpc, s, "anvil_setBalance", s.operator.address, hex(10**9))
                body = await _until(url, ready=False, cause="balance")
                assert s.operator.address in body["reasons"]["balance"]
                await asyncio.to_thread(_rpc, s, "anvil_setBalance", s.operator.address, hex(balance))
                await _until(url, ready=True)

                # free stake below the least claim stake (minClaimStake, 0.01 ETH on the devnet)
                registry = s.contract("NodeRegistry")
                free = registry.functions.freeStake(s.operator.address).call()
                send(s.w3, s.operator, registry.functions.requestUnstake(free - Web3.to_wei(0.005, "ether")))
                await _until(url, ready=False, cause="stake")
                send(s.w3, s.operator, registry.functions.addStake(), value=free)
                await _until(url, ready=True)

                # the engine stops
                await daemon.service.engine.stop()
                await _until(url, ready=False, cause="engine")
                await daemon.service.engine.start()
                await _until(url, ready=True)

                # /healthz stays "process alive" throughout
                async with ClientSession() as http, http.get(f"{url}/healthz") as r:
                    assert r.status == 200
        finally:
            await proxy.stop()


async def test_watchdog_is_fed_only_while_the_loops_progress(
    tmp_path: Path, tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # WatchdogSec=0.6: the daemon pings every 0.3 s

    def drain() -> list[str]:
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(sock.recv(4096).decode())
        return out

    async with protocol_stack(tmp_path) as s:
        s.register_node(tiny)
        config = s.node_config(health={"check_interval_s": 0.2, "stalled_after_s": 1.0})
        try:
            async with _daemon(config, tiny_llama(0)) as (_daemon_obj, url):
                await _until(url, ready=True)
                first = []
                for _ in range(15):  # read as systemd does, as they come
                    await asyncio.sleep(0.1)
                    first += drain()
                assert any(m.startswith("READY=1") for m in first)
                assert sum(m == "WATCHDOG=1" for m in first) >= 3
                assert any(m.startswith("STATUS=") for m in first)
                # the watcher's loop wedges: after stalled_after_s the watchdog is no longer fed
                (watch,) = [t for t in asyncio.all_tasks() if t.get_name() == "watch"]
                watch.cancel()
                for _ in range(15):
                    await asyncio.sleep(0.1)
                    drain()
                later = []
                for _ in range(15):
                    await asyncio.sleep(0.1)
                    later += drain()
                assert "WATCHDOG=1" not in later and any(m.startswith("STATUS=") for m in later)
            assert "STOPPING=1" in drain()
        finally:
            sock.close()


async def test_one_daemon_per_data_folder(tmp_path: Path, tiny: LoadedModel) -> None:
    async with protocol_stack(tmp_path) as s:
        s.register_node(tiny)
        config = s.node_config()
        async with running_node(config, tiny_llama(0)):
            with pytest.raises(StartupError, match="another node daemon"):
                await run_node(config, base=tiny_llama(0))
            # a CLI command that signs with the operator key refuses while the daemon holds it
            toml = tmp_path / "node.toml"
            toml.write_text(
                f'[node]\ndata_dir = "{config.node.data_dir}"\nbase_model = "tiny-llama"\n'
                f'[chain]\nrpc_urls = ["{s.anvil.url}"]\ndeployment = "{config.chain.deployment}"\n'
                f'keystore = "{config.chain.keystore}"\npassword_file = "{config.chain.password_file}"\n'
            )
            code = await asyncio.to_thread(cli_main, ["node", "withdraw", "--config", str(toml)])
            assert code == 2
        # stopped: the folder is free again
        code = await asyncio.to_thread(cli_main, ["node", "withdraw", "--config", str(toml)])
        assert code != 2
