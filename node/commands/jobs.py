"""`openlora submit` and `openlora job status|wait`: the submitter's side, over the contract calls."""

from __future__ import annotations

import argparse

from eth_utils import keccak
from rich.console import Console
from web3 import Web3

from chain.protocol import JobStatus
from chain.signing import ResultClaim
from node.commands.common import CommandError, add_chain_options, client_from

console = Console(highlight=False)


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_from(args)
    price = (
        args.price_wei
        if args.price_wei is not None
        else client.market.functions.minPrice(args.adapter).call()
    )
    job_id = client.submit_job(
        args.adapter, args.prompt, max_tokens=args.max_tokens, price_wei=price, ttl_s=args.ttl
    )
    console.print(
        f"job {job_id} submitted: adapter {args.adapter}, escrow {Web3.from_wei(price, 'ether')} ETH"
    )
    print(job_id)
    return 0


def _status(client, job_id: int) -> tuple[JobStatus, str]:
    job = client.market.functions.getJob(job_id).call()
    status = JobStatus(job[-1])
    if status == JobStatus.NONE:
        raise CommandError(f"job {job_id} does not exist on this deployment")
    return status, job[1]


def cmd_status(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    status, node = _status(client, args.job_id)
    console.print(f"job {args.job_id}: {status.name.lower()}" + (f" by node {node}" if int(node, 16) else ""))
    result = client.result(args.job_id, client.deployment.start_block)
    if result:
        console.print(f"output: {result.output.decode(errors='replace')}")
    return 0


def verify_result_signature(client, job_id: int, tx_hash: str) -> tuple[str, str]:
    """(recovered signer, the node's registered signer) for the result in `tx_hash`."""
    tx = client.w3.eth.get_transaction(tx_hash)
    _fn, params = client.market.decode_function_input(tx["input"])
    job = client.market.functions.getJob(job_id).call()
    output_hash = keccak(params["output"]) if "output" in params else bytes(params["outputHash"])
    claim = ResultClaim(
        client.w3.eth.chain_id, client.market.address, job_id, bytes(job[4]), bytes(job[3]), output_hash
    )
    recovered = claim.recover(bytes(params["signature"]))
    registered = client.nodes.functions.getNode(job[1]).call()[0]
    return recovered, registered


def cmd_wait(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    _status(client, args.job_id)
    with console.status(f"waiting for job {args.job_id}'s result"):
        result = client.wait_result(args.job_id, timeout=args.timeout)
    recovered, registered = verify_result_signature(client, args.job_id, result.tx_hash)
    console.print(f"[bold]output[/] {result.output.decode(errors='replace')}")
    console.print(f"[bold]result tx[/] {result.tx_hash} (block {result.block_number})")
    if recovered != registered:
        console.print(
            f"[red]✘ signature recovers to {recovered}, but the node's registered signer is {registered}[/]"
        )
        return 1
    console.print(
        f"[green]✔[/] EIP-712 signature verified locally: signed by {recovered}, node {result.node}'s "
        "registered signing key"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    submit = sub.add_parser("submit", help="submit an inference job with its escrow")
    submit.add_argument("--adapter", type=int, required=True, help="adapter id in the registry")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--max-tokens", type=int, default=64)
    submit.add_argument(
        "--price-wei", type=int, help="escrow (default: the market's minimum for the adapter)"
    )
    submit.add_argument("--ttl", type=int, default=600, help="seconds until the deadline")
    add_chain_options(submit)
    submit.set_defaults(func=cmd_submit)

    job = sub.add_parser("job", help="follow a job").add_subparsers(dest="job_command", required=True)
    status = job.add_parser("status", help="where a job stands")
    status.add_argument("job_id", type=int)
    add_chain_options(status, signer=False)
    status.set_defaults(func=cmd_status)
    wait = job.add_parser("wait", help="wait for the result; verify the node's signature locally")
    wait.add_argument("job_id", type=int)
    wait.add_argument("--timeout", type=float, default=600.0)
    add_chain_options(wait, signer=False)
    wait.set_defaults(func=cmd_wait)
