"""`openlora job verify ID`: check a posted result from public data only (docs/verification.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from rich.console import Console

from chain.verify import verify_job
from inference.ipfs.sources import GatewaySource
from inference.models import SMOLLM2, TINY_LLAMA, base_model_id, load_base_model
from node.commands.common import CommandError, add_chain_options, client_from

console = Console(highlight=False)


def model_for(base_model: bytes, name: str | None) -> str:
    """The base model name whose id is `base_model` (the job's terms name it only by its keccak id)."""
    candidates = [name] if name else [SMOLLM2, TINY_LLAMA]
    for candidate in candidates:
        if base_model_id(candidate) == base_model:
            return candidate
    raise CommandError(
        f"the job's base model id 0x{base_model.hex()} is none of {', '.join(candidates)}: pass --model NAME"
    )


async def _verify(client, job_id: int, base, gateways: list[str], cache: Path):
    sources = [GatewaySource(url) for url in gateways]
    try:
        return await verify_job(client, job_id, base=base, sources=sources, cache_dir=cache)
    finally:
        for s in sources:
            await s.close()


def cmd_verify(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    if not args.gateway:
        raise CommandError("pass at least one --gateway URL serving the adapter and the node's evidence")
    terms = client.terms(args.job_id)
    base = load_base_model(model_for(terms.base_model, args.model))
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp)
        sources = [GatewaySource(url) for url in args.gateway]
        try:
            verdict = asyncio.run(
                verify_job(client, args.job_id, base=base, sources=sources, cache_dir=cache)
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
