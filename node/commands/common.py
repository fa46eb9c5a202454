"""What every chain-facing command shares: where the chain is, and whose key signs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from chain.deployment import Deployment
from chain.sdk import OpenLoRA
from node.keys import KeystoreError, load_keystore, read_password


class CommandError(RuntimeError):
    """The command could not do what was asked; exit code 1, the message says why."""


def add_chain_options(parser: argparse.ArgumentParser, *, signer: bool = True) -> None:
    group = parser.add_argument_group("chain")
    group.add_argument(
        "--rpc",
        default=os.environ.get("OPENLORA_RPC", "http://127.0.0.1:8545"),
        help="JSON-RPC endpoint (env OPENLORA_RPC)",
    )
    group.add_argument(
        "--deployment",
        type=Path,
        default=Path(os.environ.get("OPENLORA_DEPLOYMENT", "run/dev/deployment.json")),
        help="deployment file with the contract addresses (env OPENLORA_DEPLOYMENT)",
    )
    if signer:
        group.add_argument("--keystore", type=Path, help="encrypted keystore of the sending account")
        group.add_argument(
            "--password-file", type=Path, help="keystore password file (else env OPENLORA_KEYSTORE_PASSWORD)"
        )
        group.add_argument(
            "--private-key-env",
            metavar="VAR",
            help="read a raw private key from this environment variable (devnets only)",
        )


def signer_from(args: argparse.Namespace) -> LocalAccount | None:
    if getattr(args, "private_key_env", None):
        value = os.environ.get(args.private_key_env)
        if not value:
            raise KeystoreError(f"environment variable {args.private_key_env} is empty or unset")
        return Account.from_key(value)
    if getattr(args, "keystore", None):
        return load_keystore(args.keystore, read_password(args.password_file))
    return None


def client_from(args: argparse.Namespace, *, need_signer: bool = True) -> OpenLoRA:
    deployment = Deployment.load(args.deployment)
    w3 = OpenLoRA.connect(args.rpc, deployment).w3  # reachable, and the chain the deployment is for
    account = signer_from(args)
    if need_signer and account is None:
        raise KeystoreError(
            "this command sends a transaction: pass --keystore (and --password-file) or --private-key-env VAR"
        )
    return OpenLoRA(w3, deployment, account)
