"""Each start-up mistake ends `openlora node run` with exit code 2 and one line saying what to fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account

from chain.devnet import Anvil, free_port
from node.cli import main
from node.keys import PASSWORD_ENV, write_keystore

REPO = Path(__file__).resolve().parents[1]


def _setup(tmp_path: Path, anvil_url: str, **chain: object) -> Path:
    """A config whose every part is right unless a test breaks one."""
    keystore = tmp_path / "operator.json"
    if not keystore.exists():
        write_keystore(keystore, Account.create().key, "right", kdf_iterations=2**10)
    (tmp_path / "pw").write_text("right\n")
    (tmp_path / "pw").chmod(0o600)
    (tmp_path / "deployment.json").write_text(
        json.dumps(
            {
                "chain_id": 31337,
                "adapter_registry": "0x" + "11" * 20,
                "node_registry": "0x" + "22" * 20,
                "job_market": "0x" + "33" * 20,
                "start_block": 0,
            }
        )
    )
    values = {
        "rpc_urls": [anvil_url],
        "deployment": "deployment.json",
        "keystore": "operator.json",
        "password_file": "pw",
        **chain,
    }
    lines = ["[node]", 'base_model = "tiny-llama"', "[api]", f"port = {free_port()}", "[chain]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path = tmp_path / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["node", "run", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_config_is_one_line_and_exit_2_from_a_real_process(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[chain]\nconfirmations = "six"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "node.cli", "node", "run", "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "[chain].confirmations: expected int" in lines[0], proc.stderr


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[chain\n", "not valid TOML"),
        ("[chain]\nrpc_url = 'http://x'\n", "unknown key(s) rpc_url"),
        ("[admission]\nsafety_factor = 0.5\n", "[admission].safety_factor must be >= 1"),
        ("[chain]\nmax_fee_gwei = 1.0\nmax_priority_fee_gwei = 2.0\n", "cannot exceed [chain].max_fee_gwei"),
        ("[chain]\nrpc_urls = ['ws://localhost:8545']\n", "must be an http(s):// JSON-RPC endpoint"),
    ],
)
def test_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, needle: str) -> None:
    config = tmp_path / "node.toml"
    config.write_text(toml)
    code, err = _run(config, capsys)
    assert code == 2 and needle in err and len(err.splitlines()) == 1, err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(tmp_path / "nope.toml", capsys)
    assert code == 2 and "not found" in err and "openlora node init" in err


def test_missing_keystore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path, "http://127.0.0.1:1", keystore="absent.json")
    code, err = _run(config, capsys)
    assert code == 2 and "absent.json not found" in err and len(err.splitlines()) == 1, err


def test_wrong_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path, "http://127.0.0.1:1")
    (tmp_path / "pw").write_text("wrong\n")
    code, err = _run(config, capsys)
    assert code == 2 and "wrong password for keystore" in err and len(err.splitlines()) == 1, err
    assert "right" not in err  # never echo secrets


def test_world_readable_keystore_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _setup(tmp_path, "http://127.0.0.1:1")
    (tmp_path / "operator.json").chmod(0o644)
    code, err = _run(config, capsys)
    assert code == 2 and "readable by other users" in err and "chmod 600" in err, err


def test_no_password_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    config = _setup(tmp_path, "http://127.0.0.1:1")
    text = config.read_text().replace('password_file = "pw"\n', "")
    config.write_text(text)
    code, err = _run(config, capsys)
    assert code == 2 and PASSWORD_ENV in err, err


def test_unreachable_rpc(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    config = _setup(tmp_path, dead, rpc_timeout_s=1.0)
    code, err = _run(config, capsys)
    assert code == 2 and "cannot reach any RPC endpoint" in err and dead in err, err
    assert len(err.splitlines()) == 1


def test_wrong_chain_and_broken_deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Anvil(chain_id=999) as anvil:
        config = _setup(tmp_path, anvil.url)
        code, err = _run(config, capsys)
        assert code == 2 and "RPC is chain 999" in err and "31337" in err, err
        (tmp_path / "deployment.json").write_text('{"chain_id": 999}')
        code, err = _run(config, capsys)
        assert code == 2 and "is not a deployment" in err, err
