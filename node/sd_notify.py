"""systemd's notify protocol (sd_notify(3)): one datagram per message to $NOTIFY_SOCKET.

With `Type=notify` systemd waits for READY=1 before it calls the unit started; with `WatchdogSec=` it
restarts the unit when WATCHDOG=1 stops arriving (the daemon sends it only while its loops make
progress, so a wedged event loop is restarted, not left running). Without $NOTIFY_SOCKET (not under
systemd) every call does nothing."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("openlora.node")


class SystemdNotifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        self.watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID")
        if usec and (not pid or pid == str(os.getpid())):
            self.watchdog_s = int(usec) / 1e6
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                # non-blocking: the daemon's event loop must never wait on systemd (a full queue drops one)
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except BlockingIOError:
            return False  # the receiver's queue is full: the next period sends again
        except OSError as e:  # systemd gone or socket unwritable: never fatal for the node
            log.warning("sd_notify to %s failed: %s", self.address, e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
