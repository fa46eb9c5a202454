"""A new operator, publisher and submitter through the real `openlora` entry point against Anvil: node init,
register, run, status, withdraw; adapter list and earnings; submit by CID; job list --mine."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from web3 import Web3

from chain.deployment import ProtocolParams
from chain.devnet import dev_private_key, free_port
from inference.models import LoadedModel, tiny_llama
from node.cli import main
from node.config import load_config
from node.identity import node_peer_id
from scripts.fault_injection import all_paid, wait_until
from tests.factories import make_peft_adapter
from tests.stack import ADAPTER_FEE, protocol_stack, running_node


def _run(capsys, *argv: object) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


def _node_paid(url: str) -> int:
    with urllib.request.urlopen(f"{url}/status", timeout=5) as r:
        return json.loads(r.read())["jobs_by_state"].get("paid", 0)


def _last_json(out: str):
    return json.loads(out.strip().splitlines()[-1])


async def test_operator_publisher_and_submitter_commands(
    tmp_path: Path, tiny: LoadedModel, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("SUBMITTER_KEY", dev_private_key(3))
    monkeypatch.setenv("PUBLISHER_KEY", dev_private_key(2))
    run = lambda *argv: asyncio.to_thread(_run, capsys, *argv)  # noqa: E731  (the node runs in this loop)
    async with protocol_stack(tmp_path) as s:
        chain = ["--rpc", s.anvil.url, "--deployment", tmp_path / "deployment.json"]
        adapter_id, pkg = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=71), tiny)
        password = tmp_path / "operator-password"
        password.write_text("correct horse battery staple\n")
        password.chmod(0o600)
        node_dir = tmp_path / "my-node"
        init = [
            "node", "init", "--dir", node_dir, "--base-model", "tiny-llama", *chain,
            "--gateway", s.gateway_url, "--api-port", free_port(), "--password-file", password,
        ]  # fmt: skip

        # node init: a commented config that loads, an encrypted keystore, the address to fund
        code, out = await run(*init, "--json")
        assert code == 0, out
        operator = _last_json(out)["address"]
        assert f"fund {operator}" in out
        config_text = (node_dir / "node.toml").read_text()
        assert config_text.count("#") > 30 and "[admission]" in config_text and "[p2p]" in config_text
        config = load_config(node_dir / "node.toml")
        assert config.node.base_model == "tiny-llama" and config.ipfs.gateways == [s.gateway_url]
        assert (node_dir / "operator.keystore.json").stat().st_mode & 0o077 == 0
        code, out = await run(*init)
        assert code == 2 and "refusing to overwrite" in out, out

        # register: an unfunded key is a readable failure (exit 1); funded, it stakes and registers
        code, out = await run("node", "register", "--config", node_dir / "node.toml")
        assert code == 1 and "insufficient funds" in out.lower(), out
        s.w3.eth.send_transaction(
            {"from": s.deployer.address, "to": operator, "value": Web3.to_wei(5, "ether")}
        )
        code, out = await run("node", "register", "--config", node_dir / "node.toml", "--stake", "0.0001")
        assert code == 1 and "below the registry's minimum" in out, out
        code, out = await run("node", "register", "--config", node_dir / "node.toml", "--stake", "2")
        assert code == 0 and "registered for tiny-llama" in out, out
        node = s.contract("NodeRegistry").functions.getNode(operator).call()
        assert node[0] == operator and node[-1] == node_peer_id(config.identity_path)

        code, out = await run("node", "status", "--config", node_dir / "node.toml")
        assert code == 1 and "no daemon answering" in out, out

        # the adapter, as a publisher sees the registry
        code, out = await run("adapter", "list", "--json", *chain)
        listed = {a["adapter_id"]: a for a in _last_json(out)}
        assert code == 0 and listed[adapter_id]["cid"] == pkg.cid and not listed[adapter_id]["retired"]

        async with running_node(config, tiny_llama(0)) as url:
            # a submitter names the adapter by its CID
            deadline = s.w3.eth.get_block("latest")["timestamp"] + 900
            code, out = await run(
                "submit", "--adapter", pkg.cid, "--prompt", "hello operator", "--max-tokens", "6",
                "--price", "0.02", "--deadline", deadline, "--private-key-env", "SUBMITTER_KEY", "--json",
                *chain,
            )  # fmt: skip
            assert code == 0, out
            submitted = _last_json(out)
            assert submitted["adapter_id"] == adapter_id
            job = s.submit(adapter_id, "a second job", max_tokens=6)
            await wait_until(lambda: all_paid(s, [submitted["job_id"], job]), 90, "both jobs paid")
            await wait_until(lambda: _node_paid(url) == 2, 30, "the node to record both payments")

            code, out = await run("node", "status", "--config", node_dir / "node.toml")
            assert code == 0 and "paid 2" in out and pkg.cid in out, out
            code, out = await run("node", "status", "--url", url, "--json")
            assert code == 0 and _last_json(out)["jobs_by_state"]["paid"] == 2

        code, out = await run("job", "list", "--mine", "--private-key-env", "SUBMITTER_KEY", "--json", *chain)
        mine = _last_json(out)
        assert code == 0 and [j["job_id"] for j in mine] == [submitted["job_id"], job], mine
        assert {j["status"] for j in mine} == {"resulted"} and {j["node"] for j in mine} == {operator}
        assert mine[0]["price_wei"] == str(Web3.to_wei("0.02", "ether")) and mine[0]["deadline"] == deadline
        code, out = await run("job", "list", "--submitter", s.publisher.address, *chain)
        assert code == 0 and "no jobs submitted by" in out

        # earnings are held for the challenge window, then withdrawable
        s.w3.provider.make_request("evm_increaseTime", [2 * ProtocolParams().challenge_window_s + 1])
        s.w3.provider.make_request("evm_mine", [])
        code, out = await run("adapter", "earnings", "--private-key-env", "PUBLISHER_KEY", "--json", *chain)
        earned = _last_json(out)
        assert code == 0 and earned["adapters"][str(adapter_id)] == {"jobs": 2, "wei": str(2 * ADAPTER_FEE)}
        assert int(earned["withdrawable_wei"]) == 2 * ADAPTER_FEE
        code, out = await run("withdraw", "--private-key-env", "PUBLISHER_KEY", *chain)
        assert code == 0 and "withdrew 0.004 ETH" in out, out
        assert s.contract("JobMarket").functions.balanceOf(s.publisher.address).call() == 0

        before = s.w3.eth.get_balance(operator)
        owed = s.contract("JobMarket").functions.balanceOf(operator).call()
        assert owed > 0
        code, out = await run("node", "withdraw", "--config", node_dir / "node.toml")
        assert code == 0 and "withdrew" in out, out
        assert s.contract("JobMarket").functions.balanceOf(operator).call() == 0
        assert s.w3.eth.get_balance(operator) > before  # the payout exceeds the withdraw tx's gas
        code, out = await run("node", "withdraw", "--config", node_dir / "node.toml")
        assert code == 0 and "nothing to withdraw" in out
