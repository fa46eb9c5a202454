"""`openlora adapter publish|inspect|verify`: the publisher's side of the supply chain."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
from pathlib import Path

from rich.console import Console

from node.commands.common import CommandError, add_chain_options, client_from

console = Console(highlight=False)


def _validate_against(base_model: str, files: dict[str, bytes]):
    from inference.models import load_base_model
    from inference.validate import BaseModelSpec, validate_adapter_files

    with console.status(f"loading {base_model} to check shapes"):
        base = load_base_model(base_model)
    return validate_adapter_files(files, BaseModelSpec.from_model(base.model, name=base.name))


def _describe(info: dict) -> None:
    for key, value in info.items():
        console.print(f"[bold]{key:>13}[/] {value}")


def cmd_publish(args: argparse.Namespace) -> int:
    from inference.ipfs.blockstore import BlockStore
    from inference.models import base_model_id
    from inference.publish import package_adapter, pin_to_kubo, publish_to_store

    pkg = package_adapter(args.dir, cid_version=args.cid_version)
    weights = _validate_against(args.base_model, pkg.files)
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
        with console.status(f"pinning to Kubo at {args.kubo}"):
            info["kubo"] = asyncio.run(pin_to_kubo(pkg, args.kubo))
    if not args.no_register:
        client = client_from(args)
        with console.status("registering on chain"):
            info["adapter id"] = client.register_adapter(
                pkg.cid, pkg.content_hash, base_model_id(args.base_model), pkg.rank, pkg.size, args.fee_wei
            )
    _describe(info) if not args.json else print(json.dumps(info))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from inference.publish import package_adapter
    from inference.validate import parse_safetensors_header
    from inference.validate.limits import ValidationLimits

    path = Path(args.target)
    if not path.is_dir():
        raise CommandError(
            f"{args.target} is not an adapter folder (inspect a CID with `openlora adapter verify`)"
        )
    pkg = package_adapter(path)
    header = parse_safetensors_header(pkg.files["adapter_model.safetensors"], limits=ValidationLimits())
    config = json.loads(pkg.files["adapter_config.json"])
    info = {
        "cid": pkg.cid,
        "sha256": pkg.content_hash.hex(),
        "size": pkg.size,
        "rank": pkg.rank,
        "alpha": config.get("lora_alpha"),
        "targets": config.get("target_modules"),
        "tensors": len(header.tensors),
    }
    if args.base_model:
        weights = _validate_against(args.base_model, pkg.files)
        info["valid for"] = f"{args.base_model} ({len(weights.layers)} layers adapted)"
    _describe(info) if not args.json else print(json.dumps(info, default=str))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from inference.ipfs.fetcher import fetch_adapter_dir
    from inference.ipfs.sources import GatewaySource

    if not args.gateway:
        raise CommandError("name at least one --gateway URL to fetch from")
    expected = None
    if args.adapter_id is not None:
        adapter = client_from(args, need_signer=False).adapters.functions.getAdapter(args.adapter_id).call()
        expected, registered_cid = bytes(adapter[1]), adapter[7]
        if registered_cid != args.cid:
            raise CommandError(
                f"adapter {args.adapter_id} is registered with CID {registered_cid}, not {args.cid}"
            )

    async def fetch() -> dict[str, bytes]:
        sources = [GatewaySource(url) for url in args.gateway]
        try:
            return await fetch_adapter_dir(args.cid, sources, max_bytes=args.max_mb << 20)
        finally:
            for s in sources:
                await s.close()

    with console.status(f"fetching {args.cid}, every block checked against its CID"):
        files = asyncio.run(fetch())
    digest = hashlib.sha256(files["adapter_model.safetensors"]).digest()
    console.print(
        f"[green]✔[/] every block of {args.cid} matches its CID "
        f"({sum(len(b) for b in files.values())} bytes of files)"
    )
    if expected is not None:
        if digest != expected:
            console.print(f"[red]✘ sha256 {digest.hex()} differs from the registry's {expected.hex()}[/]")
            return 1
        console.print(f"[green]✔[/] sha256 {digest.hex()} equals the registry's content hash")
    else:
        console.print(f"  sha256 {digest.hex()} (pass --adapter-id to compare with the registry)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("adapter", help="publish, inspect and verify LoRA adapters").add_subparsers(
        dest="adapter_command", required=True
    )

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
    add_chain_options(publish)
    publish.set_defaults(func=cmd_publish)

    inspect = group.add_parser("inspect", help="show an adapter folder's CID, hash, rank and tensors")
    inspect.add_argument("target", help="adapter folder")
    inspect.add_argument("--base-model", help="also validate it against this base model")
    inspect.add_argument("--json", action="store_true")
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
    add_chain_options(verify, signer=False)
    verify.set_defaults(func=cmd_verify)
