"""`openlora submit` and `openlora job status|wait|list`: the submitter's side, over the SDK's calls."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import UTC, datetime
from decimal import Decimal

from rich.console import Console
from rich.table import Table
from web3 import Web3

from chain.client import JobInfo
from node.commands.common import CommandError, add_chain_options, client_from

console = Console(highlight=False)


def _adapter_id(client, ref: str) -> int:
    """An adapter id, or the CID of a registered, live adapter."""
    if ref.isdigit():
        return int(ref)
    live = [a for a in client.list_adapters() if a.cid == ref and not a.retired]
    if not live:
        raise CommandError(f"no live adapter with CID {ref} in the registry (see `openlora adapter list`)")
    return live[-1].adapter_id


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_from(args)
    adapter_id = _adapter_id(client, args.adapter)
    price_wei = Web3.to_wei(args.price, "ether") if args.price is not None else args.price_wei
    job = client.submit(
        adapter_id,
        args.prompt,
        max_tokens=args.max_tokens,
        price_wei=price_wei,
        deadline=args.deadline,
        ttl_s=args.ttl,
    )
    if args.json:
        print(json.dumps({**asdict(job), "adapter_id": adapter_id}))
        return 0
    console.print(
        f"job {job.job_id} submitted: adapter {adapter_id},"
        f" escrow {Web3.from_wei(job.price_wei, 'ether')} ETH,"
        f" deadline {_when(job.deadline)}, tx {job.tx_hash}"
    )
    print(job.job_id)
    return 0


def _when(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _job_json(job: JobInfo) -> dict:
    return {
        "job_id": job.job_id,
        "status": job.status.name.lower(),
        "submitter": job.submitter,
        "node": job.node,
        "adapter_id": job.adapter_id,
        "price_wei": str(job.price_wei),
        "max_tokens": job.max_tokens,
        "deadline": job.deadline,
    }


def cmd_status(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    job = client.job(args.job_id)
    result = client.result(args.job_id, client.deployment.start_block)
    if args.json:
        print(json.dumps({**_job_json(job), "output": result.text if result else None}))
        return 0
    by = f" by node {job.node}" if job.node else ""
    console.print(f"job {job.job_id}: {job.status.name.lower()}{by}, deadline {_when(job.deadline)}")
    if result:
        console.print(f"output: {result.text}")
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    client.job(args.job_id)  # an unknown job is an error now, not a timeout later
    with console.status(f"waiting for job {args.job_id}'s result"):
        verified = client.wait_verified(args.job_id, timeout=args.timeout)
    result, check = verified.result, verified.signature
    console.print(f"[bold]output[/] {result.text}")
    console.print(f"[bold]result tx[/] {result.tx_hash} (block {result.block_number})")
    if not check.valid:
        console.print(
            f"[red]✘ signature recovers to {check.recovered}, but the node's registered signer is"
            f" {check.registered}[/]"
        )
        return 1
    console.print(
        f"[green]✔[/] EIP-712 signature verified locally: signed by {check.recovered}, node {result.node}'s "
        "registered signing key"
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=args.mine)
    submitter = client.address if args.mine else args.submitter
    if submitter is None:
        raise CommandError("say whose jobs: --mine (with a key option) or --submitter ADDRESS")
    jobs = client.jobs(submitter)
    if args.json:
        print(json.dumps([_job_json(j) for j in jobs]))
        return 0
    if not jobs:
        console.print(f"no jobs submitted by {submitter}")
        return 0
    table = Table("job", "status", "adapter", "escrow (ETH)", "max tokens", "node", "deadline", box=None)
    for j in jobs:
        table.add_row(
            str(j.job_id),
            j.status.name.lower(),
            str(j.adapter_id),
            str(Web3.from_wei(j.price_wei, "ether")),
            str(j.max_tokens),
            j.node or "-",
            _when(j.deadline),
        )
    console.print(table)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="submit an inference job with its escrow")
    submit.add_argument(
        "--adapter", required=True, metavar="ID|CID", help="adapter id or CID in the registry"
    )
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--max-tokens", type=int, default=64)
    price = submit.add_mutually_exclusive_group()
    price.add_argument(
        "--price",
        type=Decimal,
        metavar="ETH",
        help="escrow in ETH (default: covers a node's gas and compute at today's fees)",
    )
    price.add_argument("--price-wei", type=int, help="escrow in wei")
    deadline = submit.add_mutually_exclusive_group()
    deadline.add_argument("--deadline", type=int, metavar="UNIX_TIME", help="latest time for the result")
    deadline.add_argument(
        "--ttl", type=int, default=600, help="seconds from now until the deadline (default 600)"
    )
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    add_chain_options(submit)
    submit.set_defaults(func=cmd_submit)

    job = sub.add_parser("job", help="follow a job").add_subparsers(dest="job_command", required=True)
    status = job.add_parser("status", help="where a job stands")
    status.add_argument("job_id", type=int)
    status.add_argument("--json", action="store_true")
    add_chain_options(status, signer=False)
    status.set_defaults(func=cmd_status)
    wait = job.add_parser("wait", help="wait for the result; verify the node's signature locally")
    wait.add_argument("job_id", type=int)
    wait.add_argument("--timeout", type=float, default=600.0)
    add_chain_options(wait, signer=False)
    wait.set_defaults(func=cmd_wait)
    listing = job.add_parser("list", help="jobs you (or another address) submitted, as they stand now")
    whose = listing.add_mutually_exclusive_group(required=True)
    whose.add_argument("--mine", action="store_true", help="the jobs of the account given by the key options")
    whose.add_argument("--submitter", metavar="ADDRESS")
    listing.add_argument("--json", action="store_true")
    add_chain_options(listing)
    listing.set_defaults(func=cmd_list)
    from node.commands import verify

    verify.register(job)
