"""Content-addressed blocks on disk. A block's file name comes only from its CID's multihash (never from a
name a peer supplied); writes are atomic (temp file + rename) and verified against the CID first."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .cid import ParsedCid, block_key, parse_cid
from .unixfs import ImportedDag


class BlockMismatchError(ValueError):
    """A block whose bytes do not hash to the CID it was stored or offered under."""


class BlockStore:
    """Layout: <root>/blocks/<2 chars>/<base32 multihash>.data, sharded like Kubo's flatfs."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blocks = self.root / "blocks"
        self._tmp = self.root / "tmp"
        self._blocks.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():  # half-written blocks from a crash
            leftover.unlink(missing_ok=True)

    def path_for(self, cid: str | ParsedCid) -> Path:
        key = block_key(cid)
        return self._blocks / key[-3:-1] / f"{key}.data"

    def has(self, cid: str | ParsedCid) -> bool:
        return self.path_for(cid).is_file()

    def get(self, cid: str | ParsedCid, *, verify: bool = True) -> bytes | None:
        """The block, or None if absent. With verify (the default) a block that rotted on disk is
        deleted and reported as absent, so it is fetched again instead of served."""
        parsed = parse_cid(cid)
        path = self.path_for(parsed)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if verify and not parsed.matches(data):
            path.unlink(missing_ok=True)
            return None
        return data

    def put(self, cid: str | ParsedCid, data: bytes) -> None:
        parsed = parse_cid(cid)
        if not parsed.matches(data):
            raise BlockMismatchError(f"block of {len(data)} bytes does not hash to {parsed}")
        path = self.path_for(parsed)
        if path.is_file():
            return
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def put_dag(self, dag: ImportedDag) -> None:
        for cid, data in dag.blocks.items():
            self.put(cid, data)

    def delete(self, cid: str | ParsedCid) -> None:
        self.path_for(cid).unlink(missing_ok=True)
