"""Package a PEFT adapter folder for the registry: the UnixFS directory IPFS will serve (CID), the sha256
of its weights (contentHash), its rank and size; then put the blocks where nodes can fetch them.

    python -m inference.publish PEFT_DIR [--store BLOCKSTORE_DIR] [--kubo http://127.0.0.1:5001]

Only adapter_config.json and adapter_model.safetensors are published (README.md and other files are left
out); a folder holding pickle weights (.bin, .pt, ...) is refused rather than published alongside."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from inference.ipfs.blockstore import BlockStore
from inference.ipfs.unixfs import ImportedDag, import_directory
from inference.validate.strict_json import StrictJsonError, loads_object

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1 << 20


class PublishError(ValueError):
    """The folder cannot be published as an adapter; the message says what to change."""


@dataclass(frozen=True)
class PackagedAdapter:
    cid: str  # root of the UnixFS directory, as `ipfs add -r [--cid-version=1]` gives it
    content_hash: bytes  # sha256 of adapter_model.safetensors: the registry's contentHash
    size: int  # bytes a node downloads: the DAG's cumulative size (files + UnixFS overhead)
    rank: int  # adapter_config.json "r"
    dag: ImportedDag
    files: dict[str, bytes]


def _check_safetensors(data: bytes) -> None:
    if len(data) < 8:
        raise PublishError(f"{WEIGHTS_FILE} is {len(data)} bytes: not a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > len(data) - 8:
        raise PublishError(f"{WEIGHTS_FILE} claims a {header_len}-byte header in a {len(data)}-byte file")
    try:
        loads_object(data[8 : 8 + header_len])  # bounded: a deep-nested header cannot crash the process
    except StrictJsonError as exc:
        raise PublishError(f"{WEIGHTS_FILE} header: {exc}: not a safetensors file") from None


def _rank(config_bytes: bytes) -> int:
    try:
        config = loads_object(config_bytes)
    except StrictJsonError as exc:
        raise PublishError(f"{CONFIG_FILE}: {exc}") from None
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise PublishError(f'{CONFIG_FILE} must hold a positive integer "r" (the LoRA rank), got {rank!r}')
    return rank


def package_adapter(peft_dir: Path, *, cid_version: int = 1) -> PackagedAdapter:
    """Read a PEFT adapter folder (as save_pretrained writes it) and build its IPFS directory."""
    peft_dir = Path(peft_dir)
    if not peft_dir.is_dir():
        raise PublishError(f"{peft_dir} is not a folder; pass the folder PEFT's save_pretrained wrote")
    pickles = sorted(p.name for p in peft_dir.iterdir() if p.name.lower().endswith(PICKLE_SUFFIXES))
    if pickles:
        raise PublishError(
            f"{peft_dir} holds pickle weights {pickles}: pickles can run code when loaded and are never "
            f"published. Save with save_pretrained(..., safe_serialization=True) and remove them"
        )
    files: dict[str, bytes] = {}
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = peft_dir / name
        if not path.is_file():
            raise PublishError(f"{peft_dir} has no {name}; an adapter needs {CONFIG_FILE} and {WEIGHTS_FILE}")
        files[name] = path.read_bytes()
    if len(files[CONFIG_FILE]) > MAX_CONFIG_BYTES:
        raise PublishError(
            f"{CONFIG_FILE} is {len(files[CONFIG_FILE])} bytes; nodes refuse configs over 1 MiB"
        )
    rank = _rank(files[CONFIG_FILE])
    _check_safetensors(files[WEIGHTS_FILE])
    dag = import_directory(files, cid_version=cid_version)
    return PackagedAdapter(
        cid=dag.root,
        content_hash=hashlib.sha256(files[WEIGHTS_FILE]).digest(),
        size=dag.size,
        rank=rank,
        dag=dag,
        files=files,
    )


def publish_to_store(pkg: PackagedAdapter, store: BlockStore) -> None:
    """Put every block into a BlockStore, e.g. the one a TrustlessGateway serves."""
    store.put_dag(pkg.dag)


async def pin_to_kubo(pkg: PackagedAdapter, api_url: str, *, timeout_s: float = 300) -> str:
    """Add and pin the adapter on a Kubo node through its RPC API (POST /api/v0/add), with the import
    settings that reproduce pkg.cid, and check that Kubo computed the same CID. Returns the CID.

    Equivalent to `ipfs add -r --cid-version=1 --chunker=size-262144 --pin <folder>` on that node."""
    version = 0 if pkg.cid.startswith("Qm") else 1
    params = {
        "cid-version": str(version),
        "raw-leaves": "true" if version == 1 else "false",
        "chunker": "size-262144",
        "pin": "true",
        "progress": "false",
        "wrap-with-directory": "false",
    }
    with aiohttp.MultipartWriter("form-data") as form:
        part = form.append(b"", {"Content-Type": "application/x-directory"})
        part.set_content_disposition("form-data", name="file", filename="adapter")
        for name in sorted(pkg.files):
            part = form.append(pkg.files[name], {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name="file", filename=f"adapter/{name}")
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{api_url.rstrip('/')}/api/v0/add", params=params, data=form) as resp,
    ):
        body = await resp.text()
        if resp.status != 200:
            raise PublishError(f"Kubo at {api_url} refused the add: HTTP {resp.status} {body[:300]}")
    try:
        entries = [loads_object(line.encode()) for line in body.splitlines() if line.strip()]
    except StrictJsonError as exc:
        raise PublishError(
            f"Kubo at {api_url} answered something that is not its add output: {exc}"
        ) from None
    root = next((e.get("Hash") for e in entries if e.get("Name") == "adapter"), None)
    if root != pkg.cid:
        raise PublishError(
            f"Kubo computed {root} for the adapter, this tool {pkg.cid}: the node's import settings "
            f"(Import.* config) differ. Register the CID the gateways serve; check it with `ipfs add -n`"
        )
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Package a PEFT adapter for the OpenLoRA registry")
    parser.add_argument("peft_dir", type=Path)
    parser.add_argument("--cid-version", type=int, choices=(0, 1), default=1)
    parser.add_argument("--store", type=Path, help="also put the blocks into this block store (gateway dir)")
    parser.add_argument("--kubo", help="also add and pin on this Kubo RPC API, e.g. http://127.0.0.1:5001")
    args = parser.parse_args(argv)
    try:
        pkg = package_adapter(args.peft_dir, cid_version=args.cid_version)
        if args.store:
            publish_to_store(pkg, BlockStore(args.store))
        if args.kubo:
            asyncio.run(pin_to_kubo(pkg, args.kubo))
    except PublishError as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(
        json.dumps(
            {
                "cid": pkg.cid,
                "content_hash": "0x" + pkg.content_hash.hex(),
                "size": pkg.size,
                "rank": pkg.rank,
            }
        )
    )


if __name__ == "__main__":
    main()
