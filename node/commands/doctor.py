"""`openlora doctor --config node.toml`: is this node ready to earn? One line per check, each failing line
with its fix; exit code 0 only when every check passes (a check skipped because an earlier one failed
counts as not passed)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from node.commands.doctor_probes import EMPTY_FILE_CID, fetch_any, tcp_reachable
from node.config import ConfigError, NodeConfig, load_config

console = Console(highlight=False)
EXIT_OK, EXIT_PROBLEMS = 0, 1
# Gas of one job for the node when it is alone in its batches (claimJobs + submitResults, ~44k + ~77k with
# a 256-byte output, less per job in larger batches; see
# docs/protocol.md), with room for longer outputs.
GAS_PER_JOB = 250_000


@dataclass
class Check:
    name: str
    ok: bool | None  # None: skipped, a check it needs failed
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "[green]ok  [/]", False: "[red]FAIL[/]", None: "[yellow]skip[/]"}[self.ok]
        fix = f" — [bold]fix:[/] {escape(self.fix)}" if self.fix and self.ok is not True else ""
        return f"{mark} {escape(self.name)}: {escape(self.detail)}{fix}"


class Doctor:
    def __init__(self, config_path: Path, *, max_head_age_s: float, jobs: int | None) -> None:
        self.config_path, self.max_head_age_s, self.jobs = config_path, max_head_age_s, jobs
        self.checks: list[Check] = []
        self.config: NodeConfig | None = None
        self.operator = None  # LocalAccount once the keystore decrypts
        self.w3 = None  # a Web3 on the first endpoint that serves the deployment's chain
        self.deployment = None

    def report(self, name: str, ok: bool | None, detail: str, fix: str = "") -> bool:
        check = Check(name, ok, detail, fix)
        self.checks.append(check)
        console.print(check.line(), soft_wrap=True)
        return bool(ok)

    def skip(self, name: str, needs: str) -> None:
        self.report(name, None, f"not checked: needs {needs}")

    def run(self) -> int:
        if not self.check_config():
            return EXIT_PROBLEMS
        self.check_keystore()
        chain_ok = self.check_rpc()
        for name, check in (
            ("operator balance", self.check_balance),
            ("registration", self.check_registration),
        ):
            if not chain_ok:
                self.skip(name, "a reachable RPC on the deployment's chain")
            elif self.operator is None:
                self.skip(name, "a keystore that decrypts")
            else:
                check()
        self.check_ipfs()
        self.check_disk()
        if self.check_device():
            self.check_engine()
        else:
            self.skip("engine", "a usable device")
        failed = [c.name for c in self.checks if c.ok is not True]
        if failed:
            console.print(
                f"[red]{len(failed)} of {len(self.checks)} checks did not pass:[/] {', '.join(failed)}"
            )
            return EXIT_PROBLEMS
        console.print(f"[green]all {len(self.checks)} checks passed[/]")
        return EXIT_OK

    # ---- config and keys --------------------------------------------------------------------------------
    def check_config(self) -> bool:
        try:
            self.config = load_config(self.config_path)
        except ConfigError as e:
            return self.report("config", False, str(e), "fix the named key (reference: docs/operators.md)")
        return self.report("config", True, f"{self.config_path} parses")

    def check_keystore(self) -> None:
        from eth_account import Account

        from node.keys import KeystoreError, read_password

        assert self.config is not None
        c = self.config.chain
        paths = [("keystore", c.keystore)] + (
            [("signer keystore", c.signer_keystore)] if c.signer_keystore else []
        )
        for name, path in paths:
            try:
                mode = path.stat().st_mode
                data = json.loads(path.read_text())  # our own keystore file; eth-account checks its fields
            except FileNotFoundError:
                self.report(name, False, f"{path} not found", "fix [chain].keystore, or `openlora node init`")
                continue
            except (OSError, ValueError) as e:
                self.report(name, False, f"{path} unreadable: {e}", "check the file and its owner")
                continue
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                self.report(
                    f"{name} mode",
                    False,
                    f"{path} is mode {oct(mode & 0o777)}, readable by others",
                    f"chmod 600 {path}",
                )
            else:
                self.report(f"{name} mode", True, f"{path} is mode {oct(mode & 0o777)}")
            try:
                account = Account.from_key(Account.decrypt(data, read_password(c.password_file)))
            except KeystoreError as e:
                self.report(
                    f"{name} password",
                    False,
                    str(e),
                    "set [chain].password_file or OPENLORA_KEYSTORE_PASSWORD",
                )
                continue
            except (ValueError, KeyError, TypeError) as e:
                wrong = "MAC mismatch" in str(e)
                detail = "wrong password" if wrong else f"not an eth-account keystore ({e})"
                fix = (
                    "fix the password file or OPENLORA_KEYSTORE_PASSWORD" if wrong else "restore the keystore"
                )
                self.report(f"{name} password", False, f"{path}: {detail}", fix)
                continue
            self.report(f"{name} password", True, f"decrypts: account {account.address}")
            if name == "keystore":
                self.operator = account

    # ---- chain ------------------------------------------------------------------------------------------
    def check_rpc(self) -> bool:
        from web3 import HTTPProvider, Web3

        from chain.deployment import Deployment

        assert self.config is not None
        c = self.config.chain
        try:
            self.deployment = Deployment.load(c.deployment)
        except (OSError, ValueError, TypeError, KeyError) as e:
            self.report("deployment", False, f"{c.deployment}: {e}", "fix [chain].deployment")
            for url in c.rpc_urls:
                self.skip(f"rpc {url}", "a deployment file")
            self.skip("chain head", "a deployment file")
            return False
        self.report("deployment", True, f"{c.deployment} (chain {self.deployment.chain_id})")
        for url in c.rpc_urls:
            w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": c.rpc_timeout_s}))
            try:
                chain_id = w3.eth.chain_id
                code = w3.eth.get_code(self.deployment.job_market)
            except Exception as e:
                self.report(
                    f"rpc {url}",
                    False,
                    f"unreachable ({type(e).__name__})",
                    "start the chain node or fix [chain].rpc_urls",
                )
                continue
            if chain_id != self.deployment.chain_id:
                self.report(
                    f"rpc {url}", False, f"chain {chain_id}, the deployment's is {self.deployment.chain_id}",
                    "point [chain].rpc_urls at the deployment's network, or fix [chain].deployment",
                )  # fmt: skip
            elif not code:
                self.report(
                    f"rpc {url}", False, f"chain {chain_id} has no JobMarket at {self.deployment.job_market}",
                    "the deployment file is for another (or a restarted) chain: fix [chain].deployment",
                )  # fmt: skip
            else:
                self.report(f"rpc {url}", True, f"chain {chain_id}, contracts deployed")
                self.w3 = self.w3 or w3
        if self.w3 is None:
            self.skip("chain head", "a reachable RPC on the deployment's chain")
            return False
        head = self.w3.eth.get_block("latest")
        age = time.time() - head["timestamp"]
        syncing = self.w3.eth.syncing
        detail = f"block {head['number']}, {age:.0f} s old"
        if syncing:
            return self.report(
                "chain head", False, f"{detail}; the RPC node is still syncing", "wait for it to sync"
            )
        if self.max_head_age_s and age > self.max_head_age_s:
            return self.report(
                "chain head", False, f"{detail} (limit {self.max_head_age_s:.0f} s): the RPC node is behind",
                "use an RPC that follows the chain (an idle devnet: --max-head-age-s 0)",
            )  # fmt: skip
        return self.report("chain head", True, detail)

    def _contract(self, name: str):
        assert self.deployment is not None and self.w3 is not None
        return self.deployment.contract(self.w3.eth, name)

    def check_balance(self) -> None:
        from web3 import Web3

        assert self.config is not None and self.w3 is not None and self.operator is not None
        c = self.config.chain
        jobs = self.jobs or self.config.admission.max_committed_jobs
        base_fee = self.w3.eth.get_block("latest").get("baseFeePerGas", 0)
        cap = Web3.to_wei(c.max_fee_gwei, "gwei")
        fee = min(cap, 2 * base_fee + Web3.to_wei(c.max_priority_fee_gwei, "gwei"))
        needed = jobs * GAS_PER_JOB * fee
        balance = self.w3.eth.get_balance(self.operator.address)
        eth = lambda wei: f"{Web3.from_wei(wei, 'ether'):.6f} ETH"  # noqa: E731
        gwei = f"{Web3.from_wei(fee, 'gwei'):.2f} gwei"
        detail = f"{eth(balance)}; gas for the next {jobs} jobs at {gwei} is {eth(needed)}"
        if balance < needed:
            self.report(
                "operator balance",
                False,
                detail,
                f"send at least {eth(needed - balance)} to {self.operator.address}",
            )
        else:
            self.report("operator balance", True, detail)

    def check_registration(self) -> None:
        from web3 import Web3

        from inference.models import base_model_id

        assert self.config is not None and self.operator is not None
        address = self.operator.address
        config_arg = f"--config {self.config_path}"
        node = self._contract("NodeRegistry").functions.getNode(address).call()
        signer, model, stake, locked, _pending, _available, active, _peer = node
        if int(signer, 16) == 0:
            self.report(
                "registration",
                False,
                f"{address} is not registered in the NodeRegistry",
                f"openlora node register {config_arg} --stake 2",
            )
            return
        claim_stake = self._contract("JobMarket").functions.minClaimStake().call()  # the least a claim locks
        free = stake - locked
        eth = lambda wei: f"{Web3.from_wei(wei, 'ether')} ETH"  # noqa: E731
        name = self.config.node.base_model
        if model != base_model_id(name):
            self.report(
                "registration", False, f"{address} is registered for a model other than {name}",
                "re-register for this model (NodeRegistry.update) or fix [node].base_model",
            )  # fmt: skip
        elif not active or free < claim_stake:
            why = "inactive (stake below the minimum)" if not active else "too little free stake"
            self.report(
                "registration", False, f"{why}: free stake {eth(free)}, a claim locks {eth(claim_stake)}",
                "add stake (NodeRegistry.addStake) or wait for claimed jobs to settle",
            )  # fmt: skip
        else:
            self.report(
                "registration", True, f"active, free stake {eth(free)} >= claim stake {eth(claim_stake)}"
            )

    # ---- IPFS, disk -------------------------------------------------------------------------------------
    def _known_cid(self) -> str:
        """The newest registered adapter's root (what this node will fetch), else the empty file."""
        if self.w3 is None:
            return EMPTY_FILE_CID
        try:
            registry = self._contract("AdapterRegistry")
            count = registry.functions.adapterCount().call()
            return registry.functions.getAdapter(count).call()[-1] if count else EMPTY_FILE_CID
        except Exception:
            return EMPTY_FILE_CID

    def check_ipfs(self) -> None:
        from inference.ipfs.fetcher import GatewaySource, KuboRpcSource

        assert self.config is not None
        ipfs = self.config.ipfs
        sources = [(f"kubo rpc {ipfs.kubo_rpc}", KuboRpcSource(ipfs.kubo_rpc))] if ipfs.kubo_rpc else []
        sources += [(f"gateway {url}", GatewaySource(url)) for url in ipfs.gateways]
        if not sources and not ipfs.peers:
            self.report(
                "ipfs sources", False, "none configured: adapters cannot be fetched", "list [ipfs].gateways"
            )
        cids = list(dict.fromkeys([self._known_cid(), EMPTY_FILE_CID]))
        for name, source in sources:
            ok, detail = asyncio.run(fetch_any(source, cids))
            self.report(name, ok, detail, "" if ok else "start it, or fix the URL in [ipfs]")
        for addr in ipfs.peers:
            self.report(f"ipfs peer {addr}", *tcp_reachable(addr))

    def check_disk(self) -> None:
        assert self.config is not None
        cache = self.config.cache_dir
        budget = self.config.ipfs.cache_budget_mb << 20
        existing = next(p for p in (cache, *cache.parents) if p.exists())
        used = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) if cache.exists() else 0
        free = shutil.disk_usage(existing).free
        detail = f"{cache}: {free >> 20} MiB free + {used >> 20} MiB cached, budget {budget >> 20} MiB"
        if free + used < budget:
            self.report("disk", False, detail, "free disk space or lower [ipfs].cache_budget_mb")
        else:
            self.report("disk", True, detail)

    # ---- device, engine ---------------------------------------------------------------------------------
    def check_device(self) -> bool:
        import torch

        from node.errors import StartupError
        from node.runtime import engine_config, engine_factory

        assert self.config is not None
        try:
            engine_factory(self.config)  # the vLLM backend: installed and CUDA present
        except StartupError as e:
            return self.report("device", False, str(e), 'use [engine].backend = "builtin"')
        device = engine_config(self.config).device
        if device == "cuda" and not torch.cuda.is_available():
            return self.report(
                "device", False, f"[engine].device is cuda, but torch {torch.__version__} sees no GPU",
                'set device = "auto" or "cpu", or install the CUDA build of torch',
            )  # fmt: skip
        where = (
            torch.cuda.get_device_name(0) if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
        )
        return self.report("device", True, f"{device} ({where}), torch {torch.__version__}")

    def check_engine(self) -> None:
        import torch

        from inference.models import SMOLLM2, load_base_model
        from node.runtime import engine_config

        assert self.config is not None
        name = self.config.node.base_model
        if name == SMOLLM2:
            from inference.embedded import is_prepared, smollm2_dir

            if not is_prepared():
                self.report(
                    "engine",
                    False,
                    f"{name} is not prepared in {smollm2_dir()}",
                    "python -m inference.embedded prepare",
                )
                return
        device = engine_config(self.config).device
        started = time.monotonic()
        try:
            base = load_base_model(name)
            model = base.model.to(device)
            with torch.no_grad():
                ids = torch.tensor([base.tokenizer.encode("hi")[:4] or [0]], device=device)
                model(input_ids=ids)
        except ValueError as e:
            self.report("engine", False, str(e), "set [node].base_model to a known model")
            return
        except (RuntimeError, OSError) as e:
            self.report("engine", False, f"loading {name} on {device} failed: {e}", "see docs/models.md")
            return
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self.report(
            "engine",
            True,
            f"{name} loaded on {device}, dtype {dtype}, forward pass ok ({time.monotonic() - started:.1f} s)",
        )


def cmd_doctor(args: argparse.Namespace) -> int:
    return Doctor(args.config, max_head_age_s=args.max_head_age_s, jobs=args.jobs).run()


def register(sub: argparse._SubParsersAction) -> None:
    doctor = sub.add_parser("doctor", help="check a node's config, keys, chain, IPFS, disk and engine")
    doctor.add_argument("--config", type=Path, required=True, help="path to node.toml")
    doctor.add_argument(
        "--max-head-age-s", type=float, default=600.0, help="the chain head may be this old (0: do not check)"
    )
    doctor.add_argument(
        "--jobs", type=int, help="jobs to have gas for (default [admission].max_committed_jobs)"
    )
    doctor.set_defaults(func=cmd_doctor)
