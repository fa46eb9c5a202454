"""Operator commands for the peer network.

python -m node.p2p peer-id --identity ~/.openlora/p2p.key
    print the libp2p peer id to register on chain (creates the key, mode 0600, if missing)
python -m node.p2p serve --identity KEY --blocks DIR [--listen MULTIADDR] [--bootstrap MULTIADDR ...]
    serve the blocks of a BlockStore over bitswap until SIGTERM/SIGINT (a seeder: it does not announce
    and ignores gossip); prints one JSON line with its peer id and addresses once listening
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from eth_account import Account

from inference.ipfs.blockstore import BlockStore
from node.p2p.config import P2PConfig
from node.p2p.identity import load_or_create_identity, peer_id_of
from node.p2p.node import P2PNode

SEEDER_MODEL_ID = bytes(32)  # a seeder joins no model's topic that matters: it only answers bitswap


async def serve(args: argparse.Namespace) -> None:
    config = P2PConfig(identity_path=Path(args.identity), listen=args.listen, bootstrap=args.bootstrap or [])
    node = P2PNode(config, BlockStore(Path(args.blocks)), Account.create(), SEEDER_MODEL_ID, lambda _: False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    try:
        print(json.dumps({"peer_id": node.peer_id, "addrs": node.listen_addrs}), flush=True)
        await stop.wait()
    finally:
        await node.stop()
    stats = node.bitswap_stats
    print(json.dumps({"stopped": True, "blocks_served": stats.blocks_served}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node.p2p", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pid = sub.add_parser("peer-id", help="print (and create) this node's libp2p peer id")
    pid.add_argument("--identity", required=True)
    srv = sub.add_parser("serve", help="serve a block store over bitswap until SIGTERM")
    srv.add_argument("--identity", required=True)
    srv.add_argument("--blocks", required=True)
    srv.add_argument("--listen", default="/ip4/0.0.0.0/tcp/4001")
    srv.add_argument("--bootstrap", action="append")
    args = parser.parse_args(argv)
    try:
        if args.command == "peer-id":
            print(peer_id_of(load_or_create_identity(Path(args.identity))))
        else:
            asyncio.run(serve(args))
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
