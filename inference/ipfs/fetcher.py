"""Verified fetching of UnixFS files and adapter directories, block by block, from sources in order.

Trust model: the root CID comes from the chain, so every block below it is authenticated by its hash the
moment it arrives. A source that returns a wrong, truncated or oversize block is counted as failed and
the next source is asked; the publisher is untrusted too, so the DAG's own claims (sizes, names, shape)
are checked against the caller's limits before the bytes they describe are downloaded."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from .blockdata import as_bytes
from .cid import InvalidCidError, ParsedCid, parse_cid
from .download import FetchOptions
from .errors import (
    BlockIntegrityError,
    DagFormatError,
    FetchError,
    SizeLimitError,
    SourcesExhaustedError,
    UnsafeNameError,
)
from .sources import (
    MAX_BLOCK_SIZE,
    BlockSource,
    GatewaySource,
    KuboRpcSource,
    LocalStoreSource,
    SourceStats,
)
from .unixfs import UnixFSError, parse_directory_block
from .walk import Fetch, FetchedFile

__all__ = [
    "ADAPTER_FILES",
    "BlockIntegrityError",
    "BlockSource",
    "DagFormatError",
    "FetchError",
    "FetchOptions",
    "FetchedFile",
    "GatewaySource",
    "KuboRpcSource",
    "LocalStoreSource",
    "SizeLimitError",
    "SourceStats",
    "SourcesExhaustedError",
    "UnsafeNameError",
    "fetch_adapter",
    "fetch_adapter_dir",
    "fetch_file",
]

ADAPTER_FILES = frozenset({"adapter_config.json", "adapter_model.safetensors"})


def check_entry_name(name: str, expected: frozenset[str]) -> None:
    if not name or name in (".", "..") or any(c in name for c in "/\\\x00") or ".." in name:
        raise UnsafeNameError(f"directory entry {name!r} is not a safe file name; refusing the adapter")
    if name not in expected:
        raise UnsafeNameError(
            f"unexpected directory entry {name!r}; an adapter holds exactly {sorted(expected)}",
            reason="unexpected-entry",
        )


def _root(cid: str) -> ParsedCid:
    try:
        return parse_cid(cid)
    except InvalidCidError as exc:
        raise FetchError(str(exc), reason="bad-cid") from exc


@contextlib.asynccontextmanager
async def _fetching(
    root: ParsedCid, sources: Sequence[BlockSource], max_bytes: int, options: FetchOptions | None
) -> AsyncIterator[Fetch]:
    """One fetch of the DAG under `root`: a CAR streamed alongside if a source offers one, and every
    download left over cancelled at the end."""
    fetch = Fetch(sources, max_bytes, options or FetchOptions())
    try:
        async with fetch.streaming_car(root):
            yield fetch
    finally:
        await fetch.close()


async def fetch_file(
    cid: str, sources: Sequence[BlockSource], *, max_bytes: int, options: FetchOptions | None = None
) -> bytes | bytearray:
    """The bytes of the UnixFS file at `cid`, every block verified; at most max_bytes downloaded."""
    root = _root(cid)
    async with _fetching(root, sources, max_bytes, options) as fetch:
        return (await fetch.file(root, cap=MAX_BLOCK_SIZE)).data


async def fetch_adapter(
    root_cid: str,
    sources: Sequence[BlockSource],
    *,
    max_bytes: int,
    expected: frozenset[str] = ADAPTER_FILES,
    options: FetchOptions | None = None,
    into: Path | None = None,
) -> dict[str, FetchedFile]:
    """{name: FetchedFile} for a UnixFS directory holding exactly the `expected` files (by default a PEFT
    adapter: adapter_config.json and adapter_model.safetensors). Names and declared sizes are checked
    before any file is fetched; each file's sha256 is computed while it streams in. With `into` (an
    existing folder) the files are written there block by block instead of held in memory; the caller
    decides what happens to them once the sha256 is known (the store renames them into its cache)."""
    root = _root(root_cid)
    async with _fetching(root, sources, max_bytes, options) as fetch:
        return await _fetch_dir(fetch, root, max_bytes, expected, into)


async def _fetch_dir(
    fetch: Fetch, root: ParsedCid, max_bytes: int, expected: frozenset[str], into: Path | None
) -> dict[str, FetchedFile]:
    block = await fetch.block(root, MAX_BLOCK_SIZE)
    try:
        links = parse_directory_block(root, as_bytes(block))
    except UnixFSError as exc:
        raise DagFormatError(f"{exc}; an adapter CID must name a directory (ipfs add -r)") from exc
    names = [link.name for link in links]
    for name in names:
        check_entry_name(name, expected)
    if len(set(names)) != len(names) or set(names) != expected:
        raise DagFormatError(
            f"adapter directory {root} has entries {names}, expected exactly {sorted(expected)}"
        )
    declared = len(block) + sum(link.tsize for link in links)
    if declared > max_bytes:
        raise SizeLimitError(f"adapter {root} declares {declared} bytes, the cap is {max_bytes}")
    bodies = await fetch.gather(
        [
            fetch.file(link.cid, cap=link.tsize or MAX_BLOCK_SIZE, dest=into / link.name if into else None)
            for link in links
        ]
    )
    return dict(zip(names, bodies, strict=True))


async def fetch_adapter_dir(
    root_cid: str,
    sources: Sequence[BlockSource],
    *,
    max_bytes: int,
    expected: frozenset[str] = ADAPTER_FILES,
    options: FetchOptions | None = None,
) -> dict[str, bytes | bytearray]:
    """`fetch_adapter` without the digests: {name: bytes}."""
    files = await fetch_adapter(root_cid, sources, max_bytes=max_bytes, expected=expected, options=options)
    return {name: f.data for name, f in files.items()}
