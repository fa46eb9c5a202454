"""`openlora validator run`: the validator daemon (node/validator.py, docs/verification.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from rich.console import Console

from chain.deployment import Deployment
from chain.sdk import OpenLoRA
from inference.ipfs.sources import GatewaySource
from inference.models import load_base_model
from node.commands.common import CommandError, add_chain_options, signer_from

console = Console(highlight=False)


async def _run(daemon) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await daemon.run(stop)
    finally:
        for source in daemon.sources:
            await source.close()


def cmd_run(args: argparse.Namespace) -> int:
    from node.validator import ValidatorDaemon

    account = signer_from(args)
    if account is None:
        raise CommandError("a validator sends disputes and votes: pass --keystore or --private-key-env VAR")
    if not args.gateway:
        raise CommandError("pass --gateway URL (repeat): where adapters and the nodes' evidence are served")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    deployment = Deployment.load(args.deployment)
    w3 = OpenLoRA.connect(args.rpc, deployment).w3
    daemon = ValidatorDaemon(
        w3,
        deployment,
        account,
        load_base_model(args.model),
        [GatewaySource(url) for url in args.gateway],
        args.data_dir,
        sample_rate=args.sample,
        poll_s=args.poll_s,
        confirmations=args.confirmations,
        port=args.port,
    )
    asyncio.run(_run(daemon))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    validator = sub.add_parser("validator", help="validate results and dispute the wrong ones")
    cmds = validator.add_subparsers(dest="validator_command", required=True)
    run = cmds.add_parser("run", help="re-check a sample of new results; dispute and vote on failures")
    run.add_argument("--model", required=True, help="the base model this validator checks results of")
    run.add_argument("--gateway", action="append", default=[], metavar="URL", help="adapter/evidence gateway")
    run.add_argument("--data-dir", type=Path, default=Path("run/validator"), help="cursor, caches, evidence")
    run.add_argument("--sample", type=float, default=1.0, help="share of new results to re-check (0-1]")
    run.add_argument("--poll-s", type=float, default=2.0)
    run.add_argument("--confirmations", type=int, default=0, help="blocks a log must be under the head")
    run.add_argument("--port", type=int, default=0, help="port of the evidence gateway (0: any free one)")
    add_chain_options(run)
    run.set_defaults(func=cmd_run)
