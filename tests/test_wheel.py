"""The operator's install path: `python -m build` makes a wheel that carries the contract ABIs, the status
page and the systemd unit; installed into a fresh venv outside the checkout, its `openlora` command runs a
node that is paid for a job submitted with the same command, against a real Anvil devnet."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from web3 import Web3

from chain.artifacts import CONTRACT_NAMES, FORGE_OUT, REPO_ROOT, forge_artifact_path
from chain.devnet import dev_private_key, free_port
from inference.models import LoadedModel
from scripts.fault_injection import all_paid, wait_until
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack

pytestmark = pytest.mark.skipif(
    not forge_artifact_path("JobMarket").exists(), reason="contracts not built: run `make contracts`"
)


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return {**env, "COLUMNS": "200", **extra}


def _build(source: Path, outdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(source)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=300,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist, then the wheel built from it (what `python -m build` does)."""
    out = tmp_path_factory.mktemp("dist")
    done = _build(REPO_ROOT, out)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (whl,) = out.glob("openlora_node-*.whl")
    return whl


def _dependency_dirs() -> list[str]:
    """site-packages of the interpreter running the tests, minus anything that would import this checkout."""
    dirs = []
    for p in sys.path:
        path = Path(p)
        if path.name == "site-packages" and path.is_dir() and not (path / "node" / "cli.py").exists():
            dirs.append(str(path.resolve()))
    return dirs


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout: openlora-node from the wheel (--no-deps); torch, web3 and the other
    dependencies reused from the test interpreter's site-packages through a plain .pth file (plain path
    lines only: their own .pth files, such as an editable install's finder, are not run)."""
    root = tmp_path_factory.mktemp("operator-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    (site,) = root.glob("lib/python*/site-packages")
    (site / "zz-openlora-deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(root / "bin" / "python"), "install", "-q",
         "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, env=_clean_env(), timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return root


def test_wheel_carries_abis_equal_to_forge_output_status_page_and_unit(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for name in CONTRACT_NAMES:
            packaged = json.loads(zf.read(f"chain/abi/{name}.json"))
            forge = json.loads(forge_artifact_path(name).read_text())
            assert packaged["abi"] == forge["abi"], name
            assert packaged["bytecode"]["object"] == forge["bytecode"]["object"], name
            assert packaged["deployedBytecode"]["object"] == forge["deployedBytecode"]["object"], name
        unit = zf.read("node/share/openlora-node.service")
        assert unit == (REPO_ROOT / "scripts" / "openlora-node.service").read_bytes()
        assert "node/static/status.html" in names and "node/cli.py" in names
        assert not any(n.startswith(("tests/", "scripts/", "contracts/")) for n in names), sorted(names)


def test_wheel_build_without_forge_output_fails_clearly(tmp_path: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.split()
    for rel in listed:
        src = REPO_ROOT / rel
        if src.is_file() and not rel.startswith(("contracts/out", "tests/")):
            (tmp_path / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, tmp_path / "src" / rel)
    done = _build(tmp_path / "src", tmp_path / "dist")
    assert done.returncode != 0
    assert (
        "forge output for AdapterRegistry, NodeRegistry, JobMarket, ValidatorArbiter not found"
        in done.stdout + done.stderr
    )
    assert "make contracts" in done.stdout + done.stderr
    assert not list((tmp_path / "dist").glob("*.whl"))


def test_installed_package_is_imported_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    probe = (
        "import json, sys, node, chain.artifacts as a;"
        "print(json.dumps({'node': node.__file__, 'abi': str(a.load_artifact('JobMarket').source),"
        " 'path': sys.path}))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env=_clean_env(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    site = str(next(venv.glob("lib/python*/site-packages")).resolve())
    assert seen["node"].startswith(site), seen["node"]
    assert seen["abi"] == f"{site}/chain/abi/JobMarket.json"  # package data, not contracts/out
    checkout = str(REPO_ROOT)
    assert not [p for p in seen["path"] if p == checkout or p.startswith(checkout + "/node")], seen["path"]
    assert not str(FORGE_OUT).startswith(site)


class Cli:
    """The installed `openlora` command, run with cwd outside the checkout."""

    def __init__(self, venv: Path, cwd: Path, env: dict[str, str]) -> None:
        self.exe, self.cwd, self.env = str(venv / "bin" / "openlora"), cwd, env

    async def __call__(self, *argv: object, timeout: float = 180) -> tuple[int, str]:
        done = await asyncio.to_thread(
            subprocess.run, [self.exe, *map(str, argv)], cwd=self.cwd, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    def start(self, *argv: object, log: Path) -> subprocess.Popen:
        with open(log, "wb") as fh:
            return subprocess.Popen(
                [self.exe, *map(str, argv)], cwd=self.cwd, env=self.env, stdout=fh, stderr=subprocess.STDOUT
            )


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


async def test_wheel_node_and_submitter_get_a_job_paid(venv: Path, tiny: LoadedModel, tmp_path: Path) -> None:
    started = time.monotonic()
    home = tmp_path / "operator"
    home.mkdir()
    cli = Cli(venv, home, _clean_env(SUBMITTER_KEY=dev_private_key(3), OPENLORA_HOME=str(home / "cache")))
    async with protocol_stack(tmp_path / "chain") as s:
        _, pkg = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=5), tiny)
        chain = ["--rpc", s.anvil.url, "--deployment", s.workdir / "deployment.json"]
        password = home / "password"
        password.write_text("wheel operator password\n")
        password.chmod(0o600)
        api_port = free_port()
        code, out = await cli(
            "node", "init", "--dir", "node", "--base-model", "tiny-llama", *chain, "--gateway", s.gateway_url,
            "--api-port", api_port, "--password-file", password, "--json",
        )  # fmt: skip
        assert code == 0, out
        operator = json.loads(out.strip().splitlines()[-1])["address"]
        fund = {"from": s.deployer.address, "to": operator, "value": Web3.to_wei(5, "ether")}
        s.w3.eth.send_transaction(fund)
        code, out = await cli("node", "register", "--config", "node/node.toml", "--stake", "2")
        assert code == 0 and "registered for tiny-llama" in out, out

        node = cli.start("node", "run", "--config", "node/node.toml", log=tmp_path / "node.log")
        try:
            url = f"http://127.0.0.1:{api_port}"
            await wait_until(lambda: _ready(url) or node.poll() is not None, 120, "the node to be ready")
            assert node.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            code, out = await cli(
                "submit", "--adapter", pkg.cid, "--prompt", "hello from a wheel", "--max-tokens", "6",
                "--private-key-env", "SUBMITTER_KEY", "--json", *chain,
            )  # fmt: skip
            assert code == 0, out
            job_id = json.loads(out.strip().splitlines()[-1])["job_id"]
            code, out = await cli("job", "wait", job_id, "--timeout", "120", *chain)
            node_log = (tmp_path / "node.log").read_text()[-3000:]
            assert code == 0 and "signature verified" in out, out + node_log
            assert all_paid(s, [job_id])
            assert s.contract("JobMarket").functions.heldOf(operator).call() > 0  # held: challenge window
        finally:
            node.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(node.wait, 60)
        assert rc == 0, (tmp_path / "node.log").read_text()[-3000:]
        log = (tmp_path / "node.log").read_text()
        assert str(REPO_ROOT) not in log  # nothing of the checkout was used by the installed node
    print(f"wheel node: init to paid and stopped in {time.monotonic() - started:.1f}s")
