"""The documented `cast send` recipe (docs/cli.md) submits a job with Foundry's binary, no Python of ours."""

from __future__ import annotations

import subprocess

from eth_account import Account
from web3 import HTTPProvider, Web3

from chain.client import ProtocolClient
from chain.deployment import deploy
from chain.devnet import Anvil, dev_private_key, find_tool


def test_cast_send_submits_a_job() -> None:
    cast = find_tool("cast")
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_private_key(0)))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_private_key(2)))
        adapter_id = publisher.register_adapter("bafyrecipe", b"\1" * 32, b"\2" * 32, 4, 10, 10**15)
        deadline = w3.eth.get_block("latest")["timestamp"] + 600
        prompt = subprocess.run(
            [cast, "from-utf8", "Hello"], capture_output=True, text=True, check=True
        ).stdout
        sent = subprocess.run(
            [
                cast,
                "send",
                deployment.job_market,
                "submitJob(uint256,bytes,uint32,uint64)",
                str(adapter_id),
                prompt.strip(),
                "48",
                str(deadline),
                "--value",
                "10000000000000000",
                "--private-key",
                dev_private_key(3),
                "--rpc-url",
                anvil.url,
            ],
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, sent.stderr
        client = ProtocolClient(w3, deployment)
        job = client.market.functions.getJob(1).call()
        assert job[0] == Account.from_key(dev_private_key(3)).address
        assert bytes(job[4]) == Web3.keccak(b"Hello")  # inputHash of the prompt cast encoded
        assert job[5] == 10**16
