"""The documented `cast send` recipe (docs/cli.md) submits a job with Foundry's binary, no Python of ours."""

from __future__ import annotations

import subprocess

from eth_account import Account
from web3 import HTTPProvider, Web3

from chain.client import ProtocolClient
from chain.deployment import deploy
from chain.devnet import Anvil, dev_private_key, find_tool
from chain.protocol import JobStatus


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
                "submitJob(uint256,uint96,bytes,uint32,uint64)",
                str(adapter_id),
                str(10**15),  # the most adapter fee the submitter accepts (the registry's fee now)
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
        job = client.job(1)
        assert job.submitter == Account.from_key(dev_private_key(3)).address
        assert job.input_hash == Web3.keccak(b"Hello")  # inputHash of the prompt cast encoded
        assert job.price_wei == 10**16 and job.status == JobStatus.OPEN
        state = subprocess.run(
            [
                cast,
                "call",
                deployment.job_market,
                "jobState(uint256)(uint8,address,uint256,bytes32)",
                "1",
                "--rpc-url",
                anvil.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert state[0] == "1"  # Open, read with plain cast as docs/submitters.md shows
