"""`openlora node init|register|status|withdraw` (and `node run`): the operator's side."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from web3 import Web3

from chain.sdk import OpenLoRA
from node.commands.common import CommandError, add_chain_options, client_from
from node.config import ConfigError, NodeConfig, load_config
from node.errors import StartupError
from node.keys import KeystoreError, load_keystore, read_password, write_keystore
from node.lock import held_by_daemon

console = Console(highlight=False)

CONFIG_TEMPLATE = """\
# OpenLoRA node configuration, written by `openlora node init`.
# Relative paths are relative to this file's folder. Reference: docs/operators.md.

[node]
data_dir = "data"                 # job database, adapter cache, p2p identity
base_model = {base_model}         # the model this node serves; adapters must be trained for it
log_format = "text"               # "text" for people, "json" for log shippers
log_level = "INFO"
max_inflight_jobs = 8             # jobs driven concurrently (fetch, claim, run, post)

[chain]
rpc_urls = [{rpc}]                # one or more JSON-RPC endpoints, in order of preference (failover)
deployment = {deployment}         # contract addresses, chain id, start block
keystore = "operator.keystore.json"   # the operator account: stakes, claims, gets paid
{password_line}
# signer_keystore = "signer.keystore.json"   # a separate key that signs results (default: the operator)
confirmations = 1                 # blocks deep before events are acted on and txs counted settled
finality_blocks = 64              # settled txs are re-checked against deeper reorgs until this deep
poll_interval_s = 1.0
max_fee_gwei = 200.0              # hard cap on maxFeePerGas, fee bumps included
max_priority_fee_gwei = 5.0
bump_after_s = 30.0               # no receipt after this long: same nonce, higher fees
stuck_after_s = 120.0             # a tx pending this long is "stuck": no new claims, /readyz not ready
rpc_timeout_s = 10.0
max_log_range = 2000              # most blocks per eth_getLogs; shrinks by itself when a provider refuses
max_lag_blocks = 10               # an endpoint this far behind the best one leaves the rotation
head_tag = "latest"               # or "safe" / "finalized" where the chain has them

[ipfs]
gateways = [{gateways}]           # trustless gateways (application/vnd.ipld.raw and .car)
# kubo_rpc = "http://127.0.0.1:5001"   # your own Kubo node, asked before the gateways
# peers = ["/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW..."]   # direct bitswap peers (e.g. your Kubo: `ipfs id`)
cache_budget_mb = 2048            # verified adapters on disk, LRU beyond this
max_adapter_mb = 512              # larger adapters are refused while streaming

[policy]
min_attestations = 0              # validator attestations an adapter needs on chain
allowed_publishers = []           # empty = anyone; else only these publisher addresses
denied_cids = []
min_price_wei = 0                 # an extra floor: jobs paying less are left for others
# Claim only when your share of the price covers (claim + result gas) x today's fee + compute, + margin:
compute_price_wei_per_1k_tokens = 1000000000000   # what 1,000 tokens (prompt + output) cost you
margin_percent = 20.0

[admission]
max_committed_jobs = 16           # jobs held at once; more are left for other nodes
assumed_tokens_per_s = 20.0       # decode speed until the engine has measured its own
safety_factor = 1.5               # claim only what finishes before the deadline with this margin

[health]
max_watcher_lag_blocks = 50       # /readyz is not ready while the watcher is further behind
gas_reserve_jobs = 5              # ... or the balance cannot pay gas for this many jobs

[engine]
max_slots = 8                     # adapters resident on the accelerator at once
max_rank = 64                     # largest LoRA rank served
host_budget_mb = 512              # parsed adapters kept in host memory
max_batch = 8                     # rows decoded together
max_queue = 256
max_tokens_cap = 512
device = "auto"                   # "auto", "cpu" or "cuda"
cpu_threads = 0                   # torch intra-op threads, process-wide; 0 = torch's default (all cores)
dtype = "auto"                    # auto: bfloat16 on CUDA (+ TF32), float32 on CPU; or float16 ...
pool_budget_mb = 0                # device memory for adapters (paged by rank); 0: max_slots x max_rank
backend = "builtin"               # or "vllm" (pip install 'openlora-node[vllm]', CUDA)

[api]
enabled = true
host = "127.0.0.1"                # /healthz /readyz /metrics /status and the status page at /
port = {api_port}
completions = false               # POST /v1/completions to try adapters locally (127.0.0.1 only)
# explorer_url = "https://etherscan.io/tx/{{hash}}"   # links on the status page

[p2p]
enabled = false                   # libp2p: announce warm adapters, serve and fetch blocks over bitswap
listen = "/ip4/0.0.0.0/tcp/4001"
bootstrap = []
"""


def _new_password(args: argparse.Namespace) -> tuple[str, str]:
    """(password, the config line that tells the daemon where to find it)."""
    if args.password_file:
        password = read_password(args.password_file)
        return password, f"password_file = {json.dumps(str(Path(args.password_file).resolve()))}"
    line = '# password: env OPENLORA_KEYSTORE_PASSWORD (or set password_file = "...", mode 0600)'
    env = os.environ.get("OPENLORA_KEYSTORE_PASSWORD")
    if env:
        return env, line
    if not sys.stdin.isatty():
        raise KeystoreError(
            "no keystore password: pass --password-file FILE or set OPENLORA_KEYSTORE_PASSWORD"
        )
    first = getpass.getpass("keystore password: ")
    if first != getpass.getpass("again: ") or not first:
        raise KeystoreError("the passwords differ or are empty; nothing was written")
    return first, line


def cmd_init(args: argparse.Namespace) -> int:
    folder: Path = args.dir
    config_path, keystore_path = folder / "node.toml", folder / "operator.keystore.json"
    existing = [p for p in (config_path, keystore_path) if p.exists()]
    if existing:
        raise ConfigError(
            f"{', '.join(map(str, existing))} already exist: refusing to overwrite (choose another --dir)"
        )
    password, password_line = _new_password(args)
    folder.mkdir(parents=True, exist_ok=True)
    address = write_keystore(keystore_path, secrets.token_bytes(32), password)
    quoted = json.dumps  # a JSON string is a valid TOML basic string: quotes and backslashes escaped
    config_path.write_text(
        CONFIG_TEMPLATE.format(
            base_model=quoted(args.base_model),
            rpc=quoted(args.rpc),
            deployment=quoted(str(Path(args.deployment).resolve())),
            password_line=password_line,
            gateways=", ".join(quoted(g) for g in args.gateway),
            api_port=args.api_port,
        )
    )
    load_config(config_path)  # what we wrote must load; fail here rather than at the first start
    console.print(f"[bold]config[/]   {config_path}")
    console.print(f"[bold]keystore[/] {keystore_path} (encrypted, mode 0600)")
    console.print(f"[bold]operator[/] {address}")
    console.print(
        "\nNext:\n"
        f"  1. fund {address} with the stake plus gas\n"
        f"  2. openlora node register --config {config_path} --stake 2\n"
        f"  3. openlora node run --config {config_path}   (or the systemd unit: docs/operators.md)"
    )
    if args.json:
        print(json.dumps({"config": str(config_path), "keystore": str(keystore_path), "address": address}))
    return 0


def _client_for(config: NodeConfig) -> OpenLoRA:
    """The operator's client, from the node's own config (first RPC URL, deployment, keystore). Refused
    while the node's daemon runs on that data folder: two signers on one key would race for nonces."""
    pid = held_by_daemon(config.node.data_dir)
    if pid is not None:
        raise StartupError(
            f"the node daemon (pid {pid}) is running on {config.node.data_dir} and signs with this key: "
            "stop it first (systemctl stop openlora-node), then run this command"
        )
    operator = load_keystore(config.chain.keystore, read_password(config.chain.password_file))
    return OpenLoRA.connect(
        config.chain.rpc_urls[0], config.chain.deployment, operator, timeout_s=config.chain.rpc_timeout_s
    )


def cmd_register(args: argparse.Namespace) -> int:
    from inference.models import base_model_id
    from node.identity import node_peer_id

    config = load_config(args.config)
    client = _client_for(config)
    signer = client.address
    if config.chain.signer_keystore is not None:
        signer = load_keystore(
            config.chain.signer_keystore, read_password(config.chain.password_file)
        ).address
    peer_id = node_peer_id(config.identity_path)
    stake = Web3.to_wei(args.stake, "ether")
    minimum = client.nodes.functions.minStake().call()
    if stake < minimum:
        raise CommandError(
            f"--stake {args.stake} ETH is below the registry's minimum {Web3.from_wei(minimum, 'ether')} ETH"
        )
    with console.status("registering on chain"):
        receipt = client.register_node(signer, base_model_id(config.node.base_model), peer_id, stake)
    console.print(f"[green]✔[/] node {client.address} registered for {config.node.base_model}")
    console.print(f"  stake {args.stake} ETH, signer {signer}, peer {peer_id}")
    console.print(f"  tx {receipt['transactionHash'].to_0x_hex()}")
    return 0


def _status_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/")
    config = load_config(args.config)
    if not config.api.enabled:
        raise ConfigError(f"{args.config}: [api].enabled is false, the daemon serves no /status")
    return f"http://{config.api.host}:{config.api.port}"


def cmd_status(args: argparse.Namespace) -> int:
    base = _status_url(args)
    try:
        with urllib.request.urlopen(f"{base}/status", timeout=10) as r:
            status = json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise CommandError(
            f"no daemon answering at {base}/status ({e}): is `openlora node run` up?"
        ) from None
    if args.json:
        print(json.dumps(status))
        return 0
    eth = Web3.from_wei(int(status.get("earned_wei", 0)), "ether")
    engine = status.get("engine", {})
    console.print(f"[bold]node[/]     {status['operator']} ({'ready' if status['ready'] else 'not ready'})")
    console.print(f"[bold]model[/]    {status['base_model']}, up {status['uptime_s']:.0f} s")
    by_state = sorted(status["jobs_by_state"].items())
    jobs = ", ".join(f"{state} {n}" for state, n in by_state if n) or "none yet"
    console.print(f"[bold]jobs[/]     {jobs}")
    console.print(f"[bold]earned[/]   {eth:.6f} ETH, {status['tokens_generated']} tokens generated")
    slots = engine.get("slots", [])
    held = [s for s in slots if s.get("adapter")]
    console.print(f"[bold]slots[/]    {len(held)}/{len(slots)} holding adapters")
    for s in held:
        console.print(f"           #{s['index']} {s['adapter']} (in flight: {s.get('pinned', 0)})")
    cache = status.get("cache", {})
    if cache:
        console.print(
            f"[bold]cache[/]    {cache['usage_bytes'] / 2**20:.1f} / {cache['budget_bytes'] / 2**20:.0f} MiB"
        )
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    """`node withdraw --config` (the operator's key) or top-level `withdraw` (any account's key)."""
    client = _client_for(load_config(args.config)) if getattr(args, "config", None) else client_from(args)
    amount = client.withdrawable()
    if amount == 0:
        console.print(f"nothing to withdraw for {client.address}")
        return 0
    with console.status(f"withdrawing {Web3.from_wei(amount, 'ether')} ETH"):
        receipt = client.withdraw()
    console.print(
        f"[green]✔[/] withdrew {Web3.from_wei(amount, 'ether')} ETH to {client.address}"
        f" (tx {receipt['transactionHash'].to_0x_hex()})"
    )
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from node.logs import setup_logging
    from node.runtime import run_node

    config = load_config(args.config)
    setup_logging(config.node.log_format, config.node.log_level)
    asyncio.run(run_node(config))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    node = sub.add_parser("node", help="run and manage a node").add_subparsers(
        dest="node_command", required=True
    )

    run = node.add_parser("run", help="run the node daemon")
    run.add_argument("--config", type=Path, required=True, help="path to node.toml")
    run.set_defaults(func=_cmd_run)

    init = node.add_parser("init", help="write a commented config and a new encrypted operator keystore")
    init.add_argument(
        "--dir", type=Path, default=Path("run/node"), help="where node.toml and the keystore go"
    )
    init.add_argument("--base-model", default="smollm2-135m-instruct")
    init.add_argument("--rpc", default=os.environ.get("OPENLORA_RPC", "http://127.0.0.1:8545"))
    init.add_argument(
        "--deployment", default=os.environ.get("OPENLORA_DEPLOYMENT", "run/dev/deployment.json")
    )
    init.add_argument("--gateway", action="append", default=[], help="trustless gateway URL (repeatable)")
    init.add_argument("--api-port", type=int, default=8700)
    init.add_argument(
        "--password-file",
        type=Path,
        help="keystore password file (else env OPENLORA_KEYSTORE_PASSWORD or a prompt)",
    )
    init.add_argument("--json", action="store_true", help="also print one JSON object")
    init.set_defaults(func=cmd_init)

    reg = node.add_parser("register", help="stake and register the node in the NodeRegistry")
    reg.add_argument("--config", type=Path, required=True)
    reg.add_argument(
        "--stake", type=Decimal, default=Decimal(2), help="ETH to stake (at least the registry's minimum)"
    )
    reg.set_defaults(func=cmd_register)

    status = node.add_parser("status", help="what the running daemon reports at /status")
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="read [api] host and port from this config")
    where.add_argument("--url", help="the daemon's API, e.g. http://127.0.0.1:8700")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    withdraw = node.add_parser("withdraw", help="withdraw the operator's earnings from the job market")
    withdraw.add_argument("--config", type=Path, required=True)
    withdraw.set_defaults(func=cmd_withdraw)

    anyone = sub.add_parser("withdraw", help="withdraw an account's balance (fees, payments, refunds)")
    add_chain_options(anyone)
    anyone.set_defaults(func=cmd_withdraw)
