"""A block's bytes without copying them: either one `bytes` object (a block fetched on its own) or the
pieces of the received HTTP chunks the block lies in (a block cut out of a CAR stream). Hashing, writing
and copying take the pieces one by one, so a block that straddles two socket reads is never joined.

hashlib releases the GIL while it hashes more than 2 KiB, and os.pwritev releases it while it writes, so
the helpers here are meant to run in worker threads, overlapping the socket reads on the event loop."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from .cid import ParsedCid

Buffer = bytes | bytearray | memoryview
IOV_MAX = 512  # pieces per pwritev call (Linux allows 1024)


@dataclass(frozen=True, slots=True)
class Pieces:
    """A block as consecutive views of the chunks it arrived in (read-only; the chunks stay alive)."""

    parts: tuple[memoryview, ...]
    size: int

    def __len__(self) -> int:
        return self.size

    def tobytes(self) -> bytes:
        return self.parts[0].tobytes() if len(self.parts) == 1 else b"".join(self.parts)


Block = bytes | Pieces


def parts_of(block: Block) -> tuple[Buffer, ...]:
    return block.parts if isinstance(block, Pieces) else (block,)


def as_bytes(block: Block) -> bytes:
    """One contiguous copy (only for small blocks that must be parsed: dag-pb nodes)."""
    return block.tobytes() if isinstance(block, Pieces) else block


def sha256_of(block: Block) -> bytes:
    if not isinstance(block, Pieces):
        return hashlib.sha256(block).digest()
    h = hashlib.sha256()
    for part in block.parts:
        h.update(part)
    return h.digest()


def block_matches(cid: ParsedCid, block: Block) -> bool:
    """Whether the block hashes to the CID (sha2-256 is the only hash a ParsedCid can name)."""
    return sha256_of(block) == cid.digest


def pwrite_all(fd: int, offset: int, parts: tuple[Buffer, ...]) -> None:
    """Write the parts back to back at `offset` (pwritev may write less than asked: loop until done)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.pwritev(fd, views[:IOV_MAX], offset)
        offset += written
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]
