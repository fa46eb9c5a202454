"""One daemon per data folder: an exclusive lock on `<data_dir>/node.lock` (flock, released by the kernel
when the process dies, so a crash never leaves a stale lock). Two daemons on one folder would share one
nonce sequence and one job book, and wedge both."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class DataDirLocked(RuntimeError):
    """Another process holds the data folder."""


def lock_path(data_dir: Path) -> Path:
    return Path(data_dir) / "node.lock"


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = lock_path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirLocked(
                f"another node daemon (pid {holder}) is running on {self.path.parent}: stop it first "
                "(systemctl stop openlora-node), or give this one its own [node].data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def held_by_daemon(data_dir: Path) -> str | None:
    """The pid of the daemon holding `data_dir`, or None when it is free (checked, not kept)."""
    path = lock_path(data_dir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None
