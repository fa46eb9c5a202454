"""`openlora doctor` against a real Anvil devnet and trustless gateway: an all-pass node exits 0; each broken
thing (config, keystore file/mode/password, RPC, chain id, stale head, gas balance, registration and free
stake, gateway, Kubo RPC, [ipfs].peers, disk, device, base model) prints its failing line with a fix and
exits non-zero."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from eth_account import Account
from web3 import Web3

from chain.devnet import dev_private_key, free_port
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.gateway_server import TrustlessGateway
from inference.models import LoadedModel
from node.cli import main
from node.keys import write_keystore
from tests.factories import make_peft_adapter
from tests.stack import PASSWORD, Stack, protocol_stack, send


def _toml(data: dict) -> str:
    """Tables of strings, numbers, booleans and lists of strings (a JSON string is a TOML basic string)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


class Doctor:
    def __init__(self, s: Stack, tmp: Path, capsys) -> None:
        self.s, self.tmp, self.capsys, self.runs = s, tmp, capsys, 0
        s.node_config()  # writes the operator keystore and password file
        (tmp / "pw").chmod(0o600)
        self.base = {
            "node": {"data_dir": str(tmp / "node"), "base_model": "tiny-llama"},
            "chain": {
                "rpc_urls": [s.anvil.url],
                "deployment": str(tmp / "deployment.json"),
                "keystore": str(tmp / "node-operator.json"),
                "password_file": str(tmp / "pw"),
            },
            "ipfs": {"gateways": [s.gateway_url], "cache_budget_mb": 64},
            "engine": {"device": "cpu"},
        }

    async def __call__(
        self, change: dict | None = None, *args: str, text: str | None = None
    ) -> tuple[int, str]:
        data = copy.deepcopy(self.base)
        for section, values in (change or {}).items():
            data.setdefault(section, {}).update(values)
        self.runs += 1
        path = self.tmp / f"doctor-{self.runs}.toml"
        path.write_text(text if text is not None else _toml(data))
        code = await asyncio.to_thread(main, ["doctor", "--config", str(path), *args])
        out = self.capsys.readouterr()
        return code, out.out + out.err


def _failing(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith(f"FAIL {name}")]
    assert lines, f"no failing line for {name!r} in:\n{out}"
    assert "fix:" in lines[0], lines[0]
    return lines[0]


def _keystore(tmp: Path, name: str, key: str, mode: int = 0o600) -> str:
    path = tmp / name
    write_keystore(path, key, PASSWORD, kdf_iterations=2**10)
    path.chmod(mode)
    return str(path)


async def test_doctor_all_pass_then_each_failure(tmp_path: Path, tiny: LoadedModel, capsys) -> None:
    started = time.monotonic()
    async with protocol_stack(tmp_path) as s:
        s.publish(
            make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=9), tiny
        )  # a CID the gateway has
        s.register_node(tiny)
        doctor = Doctor(s, tmp_path, capsys)

        code, out = await doctor()
        assert code == 0, out
        assert "FAIL" not in out and "skip" not in out and "all 12 checks passed" in out, out
        for name in ("config", "keystore mode", "keystore password", "deployment", f"rpc {s.anvil.url}",
                     "chain head", "operator balance", "registration", f"gateway {s.gateway_url}", "disk",
                     "device", "engine"):  # fmt: skip
            assert f"ok   {name}:" in out, (name, out)
        assert "verified" in out and "dtype float32" in out

        code, out = await doctor(text="[node]\nbogus_key = 1\n")
        assert code != 0 and "unknown key(s) bogus_key" in _failing(out, "config")

        missing = {"chain": {"keystore": str(tmp_path / "no-such-keystore.json")}}
        code, out = await doctor(missing)
        assert code != 0 and "not found" in _failing(out, "keystore")

        loose = _keystore(tmp_path, "loose.json", dev_private_key(1), mode=0o644)
        code, out = await doctor({"chain": {"keystore": loose}})
        assert code != 0 and f"chmod 600 {loose}" in _failing(out, "keystore mode")

        (tmp_path / "wrong-pw").write_text("not the password")
        (tmp_path / "wrong-pw").chmod(0o600)
        code, out = await doctor({"chain": {"password_file": str(tmp_path / "wrong-pw")}})
        assert code != 0 and "wrong password" in _failing(out, "keystore password")
        assert "not checked: needs a keystore that decrypts" in out  # balance and registration

        dead = f"http://127.0.0.1:{free_port()}"
        code, out = await doctor({"chain": {"rpc_urls": [dead]}})
        assert code != 0 and "unreachable" in _failing(out, f"rpc {dead}")
        code, out = await doctor({"chain": {"rpc_urls": [dead, s.anvil.url]}})  # failover: one is down
        assert code != 0 and "unreachable" in _failing(out, f"rpc {dead}") and "ok   registration" in out

        other_chain = json.loads((tmp_path / "deployment.json").read_text()) | {"chain_id": 1}
        (tmp_path / "mainnet.json").write_text(json.dumps(other_chain))
        code, out = await doctor({"chain": {"deployment": str(tmp_path / "mainnet.json")}})
        assert code != 0 and "the deployment's is 1" in _failing(out, f"rpc {s.anvil.url}")

        await asyncio.sleep(2.1)  # no transaction, so Anvil mines no block
        code, out = await doctor(None, "--max-head-age-s", "1")
        assert code != 0 and "the RPC node is behind" in _failing(out, "chain head")

        broke = Account.create()  # never funded, never registered
        code, out = await doctor({"chain": {"keystore": _keystore(tmp_path, "broke.json", broke.key.hex())}})
        assert code != 0 and f"to {broke.address}" in _failing(out, "operator balance")
        assert "openlora node register" in _failing(out, "registration")

        code, out = await doctor({"ipfs": {"gateways": [dead]}})
        assert code != 0 and "unreachable" in _failing(out, f"gateway {dead}")
        code, out = await doctor({"ipfs": {"kubo_rpc": dead}})
        assert code != 0 and "unreachable" in _failing(out, f"kubo rpc {dead}")
        empty = TrustlessGateway(BlockStore(tmp_path / "no-blocks"))  # answers, but has no adapter
        code, out = await doctor({"ipfs": {"gateways": [url := await empty.start()]}})
        await empty.stop()
        assert code != 0 and "serves none of the blocks" in _failing(out, f"gateway {url}")
        peer = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/QmQ9G3n4nDBa44GFgU2but3adFLbByiZ2t39ZFAMwT7ha8"
        code, out = await doctor({"ipfs": {"peers": [peer]}})
        assert code != 0 and "refused" in _failing(out, f"ipfs peer {peer}").lower()

        code, out = await doctor({"ipfs": {"cache_budget_mb": 2**40}})
        assert code != 0 and "cache_budget_mb" in _failing(out, "disk")

        if not torch.cuda.is_available():
            code, out = await doctor({"engine": {"device": "cuda"}})
            assert code != 0 and "sees no GPU" in _failing(out, "device")
            assert "skip engine" in out

        code, out = await doctor({"node": {"base_model": "no-such-model"}})
        assert code != 0 and "unknown base model" in _failing(out, "engine")
        assert "another model" in _failing(out, "registration") or "other than" in out

        # last, as it changes the node on chain: unstake all but 0.05 ETH, below the 1 ETH minimum stake
        registry = s.contract("NodeRegistry")
        send(s.w3, s.operator, registry.functions.requestUnstake(Web3.to_wei(1.95, "ether")))
        code, out = await doctor()
        line = _failing(out, "registration")
        assert code != 0 and "free stake 0.05 ETH, a claim locks 0.01 ETH" in line, line
    shutil.rmtree(tmp_path / "node", ignore_errors=True)
    print(f"{doctor.runs} doctor runs in {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("argv", [["doctor"], ["doctor", "--config"]])
def test_doctor_needs_a_config(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_the_known_empty_file_cid_is_what_ipfs_add_makes_of_nothing() -> None:
    from inference.ipfs.unixfs import import_file
    from node.commands.doctor_probes import EMPTY_FILE_CID

    assert import_file(b"", cid_version=0).root == EMPTY_FILE_CID
