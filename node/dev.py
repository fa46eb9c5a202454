"""`openlora dev`: the whole system on a local devnet, as separate processes an operator would run.

Anvil ─ contracts deployed ─ demo adapters published (blocks in a local store served over the IPFS
trustless-gateway protocol, registered on chain) ─ a node daemon (child process, its own keystore) ─
demo jobs submitted by an outside submitter ─ results, transactions and payments printed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from web3 import HTTPProvider, Web3

from chain.client import JobResult, ProtocolClient
from chain.deployment import ProtocolParams, deploy_with_forge_script
from chain.devnet import Anvil, dev_private_key, free_port
from node.identity import node_peer_id
from node.keys import write_keystore

console = Console(highlight=False)

ROLES = {"deployer": 0, "operator": 1, "publisher": 2, "submitter": 3}
ADAPTER_FEE_WEI = Web3.to_wei(0.002, "ether")
JOB_PRICE_WEI = Web3.to_wei(0.01, "ether")
NODE_STAKE_WEI = Web3.to_wei(2, "ether")


@dataclass(frozen=True)
class DevOptions:
    once: bool = False
    base_model: str = "smollm2-135m-instruct"
    workdir: Path = Path("run/dev")
    jobs_per_adapter: int = 1
    max_tokens: int = 48


def _wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


class DevStack:
    def __init__(self, opts: DevOptions) -> None:
        self.opts = opts
        self.dir = opts.workdir.resolve()
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.anvil: Anvil | None = None

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    console.print(f"[yellow]{name} did not stop in 30 s: killing it[/]")
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        if self.anvil:
            self.anvil.stop()
            self.anvil = None

    def run(self) -> int:
        from inference.models import load_base_model
        from node.demo_adapters import DEMO_PROMPTS, ensure_demo_adapters

        # Chain state lives and dies with this Anvil; cached models and adapters live in OPENLORA_HOME.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        with console.status(
            f"preparing base model {self.opts.base_model} and demo adapters (cached after the first run)"
        ):
            base = load_base_model(self.opts.base_model)
            adapters = ensure_demo_adapters(base)
        console.print(f"[bold]base model[/] {self.opts.base_model}; demo adapters: {', '.join(adapters)}")

        self.anvil = Anvil(block_time=1, log_path=self.dir / "anvil.log").start()
        w3 = Web3(HTTPProvider(self.anvil.url))
        keys = {role: dev_private_key(i) for role, i in ROLES.items()}
        accounts = {role: w3.eth.account.from_key(k) for role, k in keys.items()}
        # the operator's way: the forge script (deterministic CREATE2 addresses, deployments/<chainId>.json)
        deployment = deploy_with_forge_script(self.anvil.url, keys["deployer"], ProtocolParams())
        deployment.save(self.dir / "deployment.json")
        console.print(
            f"[bold]anvil[/] {self.anvil.url} (chain {deployment.chain_id}); "
            f"JobMarket {deployment.job_market}"
        )

        # Publisher: content-address each adapter, put its blocks behind the gateway, register it on chain.
        from inference.ipfs.blockstore import BlockStore
        from inference.models import base_model_id
        from inference.publish import package_adapter, publish_to_store

        store = BlockStore(self.dir / "blocks")
        publisher = ProtocolClient(w3, deployment, accounts["publisher"])
        adapter_ids: dict[str, int] = {}
        for name, path in adapters.items():
            pkg = package_adapter(path)
            publish_to_store(pkg, store)
            adapter_ids[name] = publisher.register_adapter(
                pkg.cid,
                pkg.content_hash,
                base_model_id(self.opts.base_model),
                pkg.rank,
                pkg.size,
                ADAPTER_FEE_WEI,
            )
            console.print(
                f"[bold]published[/] {name}: id {adapter_ids[name]} cid {pkg.cid} "
                f"sha256 {pkg.content_hash.hex()[:16]}… rank {pkg.rank} {pkg.size / 1024:.0f} KiB"
            )

        gw_port = free_port()
        gw = self._spawn(
            "gateway",
            [
                sys.executable,
                "-m",
                "inference.ipfs.gateway_server",
                "--store",
                str(self.dir / "blocks"),
                "--host",
                "127.0.0.1",
                "--port",
                str(gw_port),
            ],
        )
        gateway_url = f"http://127.0.0.1:{gw_port}"
        _wait_http(f"{gateway_url}/ipfs/{pkg.cid}?format=raw", proc=gw)

        # Operator: keystore, stake, config, daemon.
        operator = ProtocolClient(w3, deployment, accounts["operator"])
        peer_id = node_peer_id(self.dir / "node" / "p2p.key")
        operator.register_node(
            accounts["operator"].address, base_model_id(self.opts.base_model), peer_id, NODE_STAKE_WEI
        )
        password_file = self.dir / "keystore.password"
        password_file.write_text("dev-only-password\n")
        password_file.chmod(0o600)
        write_keystore(
            self.dir / "operator.keystore.json", keys["operator"], "dev-only-password", kdf_iterations=2**14
        )
        api_port = free_port()
        config_path = self.dir / "node.toml"
        config_path.write_text(
            _node_toml(self.dir, self.anvil.url, gateway_url, self.opts.base_model, api_port)
        )
        node = self._spawn(
            "node",
            [sys.executable, "-m", "node.cli", "node", "run", "--config", str(config_path)],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        with console.status("node starting (loading the base model)"):
            _wait_http(f"http://127.0.0.1:{api_port}/readyz", timeout=300, proc=node)
        console.print(
            f"[bold]node[/] {accounts['operator'].address} ready; status page http://127.0.0.1:{api_port}/ "
            f"(log: {self.dir / 'node.log'})"
        )

        # Submitter: an outside client paying into escrow through the contract.
        submitter = ProtocolClient(w3, deployment, accounts["submitter"])
        jobs: list[tuple[int, str, str]] = []
        for _ in range(self.opts.jobs_per_adapter):
            for name, prompt in DEMO_PROMPTS:
                if name in adapter_ids:
                    job_id = submitter.submit_job(
                        adapter_ids[name], prompt, max_tokens=self.opts.max_tokens, price_wei=JOB_PRICE_WEI
                    )
                    jobs.append((job_id, name, prompt))
                    console.print(f"[bold]submitted[/] job {job_id}: [{name}] {prompt!r}")

        with console.status("waiting for the node to serve the jobs"):
            for job_id, name, prompt in jobs:
                r = submitter.wait_result(job_id, timeout=600)
                console.print(_job_panel(job_id, name, adapter_ids[name], prompt, r))
        roles = (
            ("operator", "node operator"),
            ("publisher", "adapter publisher"),
            ("deployer", "protocol treasury"),
        )
        console.print(
            "withdrawable now: "
            + ", ".join(f"{label} {_eth(submitter.withdrawable(accounts[r].address))}" for r, label in roles)
        )
        window = submitter.market.functions.challengeWindow().call()
        console.print(
            f"held for the {window} s challenge window (then withdrawable, no transaction needed): "
            + ", ".join(f"{label} {_eth(submitter.held(accounts[r].address))}" for r, label in roles[:2])
        )
        if self.opts.once:
            return 0
        console.print("[bold green]devnet and node running[/] — Ctrl-C to stop everything")
        console.print(
            f"  status page  http://127.0.0.1:{api_port}/\n"
            f"  submit       KEY={accounts['submitter'].key.to_0x_hex()} openlora submit --adapter 1"
            f" --prompt 'Hello' --private-key-env KEY --rpc {self.anvil.url}"
            f" --deployment {self.dir / 'deployment.json'}\n"
            f"  try locally  curl -s http://127.0.0.1:{api_port}/v1/completions"
            """ -H 'content-type: application/json' -d '{"model": "base", "prompt": "Hello"}'""",
            soft_wrap=True,
        )
        while all(p.poll() is None for _, p in self.procs):
            time.sleep(1)
        dead = [n for n, p in self.procs if p.poll() is not None]
        console.print(f"[red]{', '.join(dead)} exited; see {self.dir}/*.log[/]")
        return 1


def _eth(wei: int) -> str:
    return f"{Web3.from_wei(wei, 'ether'):f}".rstrip("0").rstrip(".") + " ETH"


def _job_panel(job_id: int, name: str, adapter_id: int, prompt: str, r: JobResult) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("prompt", prompt)
    grid.add_row("output", Text(r.output.decode(errors="replace")))
    grid.add_row("result tx", f"{r.tx_hash} (block {r.block_number})")
    grid.add_row(
        "paid",
        f"node {_eth(r.node_amount)} · adapter publisher {_eth(r.adapter_amount)} · "
        f"protocol {_eth(r.protocol_amount)}",
    )
    return Panel(grid, title=f"job {job_id} · adapter [cyan]{name}[/] (id {adapter_id})", title_align="left")


def _node_toml(workdir: Path, rpc: str, gateway: str, base_model: str, api_port: int) -> str:
    return f"""# written by `openlora dev`
[node]
data_dir = "{workdir / "node"}"
base_model = "{base_model}"

[chain]
rpc_urls = ["{rpc}"]
deployment = "{workdir / "deployment.json"}"
keystore = "{workdir / "operator.keystore.json"}"
password_file = "{workdir / "keystore.password"}"
confirmations = 1
poll_interval_s = 0.5

[ipfs]
gateways = ["{gateway}"]

[api]
port = {api_port}
completions = true   # try an adapter locally: POST /v1/completions (127.0.0.1 only)

[verify]
# the proofs go where the devnet gateway serves the adapters' blocks: anyone can `openlora job verify`
evidence_dir = "{workdir / "blocks"}"
"""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_dev(opts: DevOptions) -> int:
    # Ctrl-C and SIGTERM both stop everything this command started (even if SIGINT was ignored by a parent).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    stack = DevStack(opts)
    try:
        return stack.run()
    except KeyboardInterrupt:
        console.print("\nstopping…")
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stack.stop()
