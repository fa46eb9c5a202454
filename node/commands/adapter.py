"""`openlora adapter publish|inspect|verify|list|earnings`: the publisher's side of the supply chain."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from web3 import Web3

from node.commands.common import CommandError, add_chain_options, client_from
from node.commands.progress import add_progress_option, steps

console = Console(highlight=False)


def _validate_against(base_model: str, files: dict[str, bytes]):
    from inference.models import load_base_model
    from inference.validate import BaseModelSpec, validate_adapter_files

    base = load_base_model(base_model)
    return validate_adapter_files(files, BaseModelSpec.from_model(base.model, name=base.name))


def _describe(info: dict) -> None:
    for key, value in info.items():
        console.print(f"[bold]{key:>13}[/] {value}")


def cmd_publish(args: argparse.Namespace) -> int:
    from inference.ipfs.blockstore import BlockStore
    from inference.models import base_model_id
    from inference.publish import package_adapter, pin_to_kubo, publish_to_store

    with steps(args) as progress:
        with progress.step(f"import {args.dir} as UnixFS (CIDv{args.cid_version})"):
            pkg = package_adapter(args.dir, cid_version=args.cid_version)
        with progress.step(f"validate against {args.base_model}"):
            weights = _validate_against(args.base_model, pkg.files)
        with progress.step(f"store {len(pkg.dag.blocks)} blocks in {args.store}"):
            publish_to_store(pkg, BlockStore(args.store))
        info = {
            "cid": pkg.cid,
            "sha256": pkg.content_hash.hex(),
            "size": pkg.size,
            "rank": pkg.rank,
            "targets": ",".join(weights.target_modules),
            "blocks": f"{len(pkg.dag.blocks)} in {args.store}",
        }
        if args.kubo:
            with progress.step(f"pin to Kubo at {args.kubo}"):
                info["kubo"] = asyncio.run(pin_to_kubo(pkg, args.kubo))
        if not args.no_register:
            client = client_from(args)
            with progress.step("register on chain"):
                info["adapter id"] = client.register_adapter(
                    pkg.cid,
                    pkg.content_hash,
                    base_model_id(args.base_model),
                    pkg.rank,
                    pkg.size,
                    args.fee_wei,
                )
    _describe(info) if not args.json else print(json.dumps(info))
    return 0


def _fetch_verified(cid: str, gateways: list[str], max_mb: int, progress, size: int | None = None):
    """{name: FetchedFile} of an adapter CID, every block checked against its CID on the way in."""
    from inference.ipfs.fetcher import fetch_adapter
    from inference.ipfs.sources import GatewaySource

    if not gateways:
        raise CommandError("name at least one --gateway URL to fetch from")

    async def fetch():
        sources = [GatewaySource(url, mode="car") for url in gateways]
        received = lambda: sum(s.stats.bytes_received for s in sources)  # noqa: E731
        try:
            async with progress.transfer(f"fetch {cid}, every block checked", size, received):
                return await fetch_adapter(cid, sources, max_bytes=max_mb << 20)
        finally:
            for s in sources:
                await s.close()

    return asyncio.run(fetch())


def cmd_inspect(args: argparse.Namespace) -> int:
    from inference.publish import package_adapter
    from inference.validate import parse_safetensors_header
    from inference.validate.limits import ValidationLimits
    from inference.validate.strict_json import StrictJsonError, loads_object

    path = Path(args.target)
    if path.is_dir():
        pkg = package_adapter(path)
        cid, files, digest, size = pkg.cid, pkg.files, pkg.content_hash, pkg.size
    elif args.target.startswith(("bafy", "Qm", "bafk")):
        with steps(args) as progress:
            fetched = _fetch_verified(args.target, args.gateway, args.max_mb, progress)
        files = {name: bytes(f.data) for name, f in fetched.items()}
        cid, digest = args.target, fetched["adapter_model.safetensors"].sha256
        size = sum(f.size for f in fetched.values())
    else:
        raise CommandError(f"{args.target} is neither an adapter folder nor a CID")
    header = parse_safetensors_header(files["adapter_model.safetensors"], limits=ValidationLimits())
    try:
        config = loads_object(files["adapter_config.json"])
    except StrictJsonError as e:
        raise CommandError(f"adapter_config.json: {e}") from None
    info = {
        "cid": cid,
        "sha256": digest.hex(),
        "size": size,
        "rank": config.get("r"),
        "alpha": config.get("lora_alpha"),
        "targets": config.get("target_modules"),
        "tensors": len(header.tensors),
    }
    if args.base_model:
        weights = _validate_against(args.base_model, files)
        info["valid for"] = f"{args.base_model} ({len(weights.layers)} layers adapted)"
    _describe(info) if not args.json else print(json.dumps(info, default=str))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    expected, size = None, None
    if args.adapter_id is not None:
        listing = client_from(args, need_signer=False).adapter(args.adapter_id)
        expected, size = listing.content_hash, listing.size
        if listing.cid != args.cid:
            raise CommandError(
                f"adapter {args.adapter_id} is registered with CID {listing.cid}, not {args.cid}"
            )
    with steps(args) as progress:
        fetched = _fetch_verified(args.cid, args.gateway, args.max_mb, progress, size)
    digest = fetched["adapter_model.safetensors"].sha256
    console.print(
        f"[green]✔[/] every block of {args.cid} matches its CID "
        f"({sum(f.size for f in fetched.values())} bytes of files)"
    )
    if expected is not None:
        if digest != expected:
            console.print(f"[red]✘ sha256 {digest.hex()} differs from the registry's {expected.hex()}[/]")
            return 1
        console.print(f"[green]✔[/] sha256 {digest.hex()} equals the registry's content hash")
    else:
        console.print(f"  sha256 {digest.hex()} (pass --adapter-id to compare with the registry)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=False)
    adapters = client.list_adapters(args.publisher)
    if args.json:
        rows = [
            {
                "adapter_id": a.adapter_id,
                "cid": a.cid,
                "publisher": a.publisher,
                "sha256": a.content_hash.hex(),
                "rank": a.rank,
                "size": a.size,
                "fee_per_job_wei": str(a.fee_per_job),
                "retired": a.retired,
            }
            for a in adapters
        ]
        print(json.dumps(rows))
        return 0
    if not adapters:
        console.print("no adapters registered" + (f" by {args.publisher}" if args.publisher else ""))
        return 0
    table = Table("id", "cid", "publisher", "rank", "size", "fee (ETH)", "state", box=None)
    for a in adapters:
        table.add_row(
            str(a.adapter_id),
            a.cid,
            a.publisher,
            str(a.rank),
            f"{a.size:,}",
            str(Web3.from_wei(a.fee_per_job, "ether")),
            "retired" if a.retired else "live",
        )
    console.print(table)
    return 0


def cmd_earnings(args: argparse.Namespace) -> int:
    client = client_from(args, need_signer=args.account is None)
    e = client.earnings(args.account)
    if args.json:
        print(
            json.dumps(
                {
                    "account": e.account,
                    "withdrawable_wei": str(e.withdrawable_wei),
                    "adapter_total_wei": str(e.adapter_total_wei),
                    "adapters": {
                        str(i): {"jobs": e.adapter_jobs[i], "wei": str(w)} for i, w in e.adapter_wei.items()
                    },
                    "node_wei": str(e.node_wei),
                    "jobs_served": e.jobs_served,
                }
            )
        )
        return 0
    eth = lambda wei: f"{Web3.from_wei(wei, 'ether')} ETH"  # noqa: E731
    console.print(f"[bold]account[/] {e.account}")
    if e.adapter_wei:
        table = Table("adapter", "paid jobs", "fees earned", box=None)
        for adapter_id, wei in e.adapter_wei.items():
            table.add_row(str(adapter_id), str(e.adapter_jobs[adapter_id]), eth(wei))
        console.print(table)
    console.print(f"[bold]adapter fees[/] {eth(e.adapter_total_wei)}")
    if e.jobs_served:
        console.print(f"[bold]as a node[/] {eth(e.node_wei)} for {e.jobs_served} job(s)")
    console.print(f"[bold]withdrawable now[/] {eth(e.withdrawable_wei)} (`openlora node withdraw` claims it)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser(
        "adapter", help="publish, inspect, verify and list LoRA adapters; earnings"
    ).add_subparsers(dest="adapter_command", required=True)

    publish = group.add_parser(
        "publish", help="validate a PEFT folder, store it as UnixFS blocks, register it"
    )
    publish.add_argument(
        "dir", type=Path, help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"
    )
    publish.add_argument(
        "--base-model", default="smollm2-135m-instruct", help="base model it was trained for"
    )
    publish.add_argument(
        "--store", type=Path, default=Path("run/blocks"), help="block store served by a gateway"
    )
    publish.add_argument("--cid-version", type=int, choices=(0, 1), default=1)
    publish.add_argument(
        "--kubo", metavar="URL", help="also pin to this Kubo RPC API (e.g. http://127.0.0.1:5001)"
    )
    publish.add_argument("--fee-wei", type=int, default=2 * 10**15, help="fee per job paid to you")
    publish.add_argument("--no-register", action="store_true", help="only validate and store; no transaction")
    publish.add_argument("--json", action="store_true", help="print one JSON object")
    add_progress_option(publish)
    add_chain_options(publish)
    publish.set_defaults(func=cmd_publish)

    inspect = group.add_parser(
        "inspect", help="show an adapter's CID, hash, rank and tensors (folder or CID)"
    )
    inspect.add_argument("target", help="adapter folder, or a CID (fetched, verified, through --gateway)")
    inspect.add_argument("--gateway", action="append", default=[], help="trustless gateway URL for a CID")
    inspect.add_argument("--max-mb", type=int, default=512)
    inspect.add_argument("--base-model", help="also validate it against this base model")
    inspect.add_argument("--json", action="store_true")
    add_progress_option(inspect)
    inspect.set_defaults(func=cmd_inspect)

    verify = group.add_parser(
        "verify", help="fetch a CID through gateways, verify every block and the sha256"
    )
    verify.add_argument("cid")
    verify.add_argument("--gateway", action="append", default=[], help="trustless gateway URL (repeatable)")
    verify.add_argument(
        "--adapter-id", type=int, help="compare with this registry entry's CID and content hash"
    )
    verify.add_argument("--max-mb", type=int, default=512)
    add_progress_option(verify)
    add_chain_options(verify, signer=False)
    verify.set_defaults(func=cmd_verify)

    listing = group.add_parser("list", help="adapters in the registry, with their terms")
    listing.add_argument("--publisher", metavar="ADDRESS", help="only this publisher's adapters")
    listing.add_argument("--json", action="store_true")
    add_chain_options(listing, signer=False)
    listing.set_defaults(func=cmd_list)

    earnings = group.add_parser("earnings", help="fees your adapters earned, and what you can withdraw")
    earnings.add_argument("--account", metavar="ADDRESS", help="another account (default: the key's)")
    earnings.add_argument("--json", action="store_true")
    add_chain_options(earnings)
    earnings.set_defaults(func=cmd_earnings)
