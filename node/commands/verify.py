"""`openlora job verify ID`: check a posted result from public data only (docs/verification.md)."""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from node.commands.common import CommandError, add_chain_options, client_from

console = Console(highlight=False)


def cmd_verify(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    if not args.gateway:
        raise CommandError("pass at least one --gateway URL serving the adapter and the node's evidence")
    try:
        verdict = client.verify_result(
            args.job_id, gateways=args.gateway, model=args.model, cache_dir=args.cache_dir
        )
    except ValueError as e:
        raise CommandError(str(e)) from None
    c = verdict.check
    if args.json:
        print(json.dumps({
            "job_id": args.job_id, "passed": c.passed, "reason": c.reason,
            "first_failing_chunk": c.first_failing_chunk, "verify_s": round(c.verify_s, 3),
            "evidence_cid": verdict.evidence_cid,
        }))  # fmt: skip
    elif c.passed:
        console.print(f"job {args.job_id}: [green]pass[/] (proof {verdict.evidence_cid}, {c.verify_s:.2f}s)")
    else:
        where = f" (first failing chunk {c.first_failing_chunk})" if c.first_failing_chunk is not None else ""
        console.print(f"job {args.job_id}: [red]FAIL[/]{where}: {c.reason}")
    return 0 if c.passed else 1


def register(job: argparse._SubParsersAction) -> None:
    verify = job.add_parser("verify", help="re-check a posted result against its proof (one prefill)")
    verify.add_argument("job_id", type=int)
    verify.add_argument(
        "--gateway", action="append", default=[], metavar="URL",
        help="trustless gateway for the adapter and the evidence (repeat; the node's API URL serves its own)",
    )  # fmt: skip
    verify.add_argument("--model", help="base model name (default: found from the job's base model id)")
    verify.add_argument("--cache-dir", help="adapter cache folder (default: a temporary one)")
    verify.add_argument("--json", action="store_true")
    add_chain_options(verify, signer=False)
    verify.set_defaults(func=cmd_verify)
