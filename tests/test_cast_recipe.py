"""The documented `cast` recipe (docs/submitters.md), run with Foundry's binary: read the adapter's fee,
submit, read the job's state, and read the output back from the result transaction's calldata. A node's
claim and batch-signed result are posted in between with plain web3 (the node's side is not under test)."""

from __future__ import annotations

import json
import subprocess

from eth_account import Account
from eth_utils import keccak
from web3 import HTTPProvider, Web3

from chain.client import ProtocolClient
from chain.deployment import deploy
from chain.devnet import Anvil, dev_private_key, find_tool
from chain.protocol import JobStatus
from chain.signing import ResultBatch, SignedResult
from tests.stack import send

RESULT_EVENT = "ResultSubmitted(uint256 indexed,address indexed,bytes32,bytes32,uint256)"
RESULTS_SIG = "submitResults((uint256,uint256[],bytes32,bytes,bytes32,bytes32)[],bytes)"


def _cast(*args: str) -> str:
    done = subprocess.run([find_tool("cast"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_cast_recipe_submits_and_reads_the_result() -> None:
    with Anvil() as anvil:
        rpc = ["--rpc-url", anvil.url]
        w3 = Web3(HTTPProvider(anvil.url))
        deployment = deploy(w3, Account.from_key(dev_private_key(0)))
        publisher = ProtocolClient(w3, deployment, Account.from_key(dev_private_key(2)))
        base = keccak(text="tiny-llama")
        adapter_id = publisher.register_adapter("bafyrecipe", b"\1" * 32, base, 4, 10, 10**15)
        market, adapters = deployment.job_market, deployment.adapter_registry

        terms_out = _cast(
            "call", adapters, "marketTerms(uint256)(bool,bool,bytes32,bytes32,uint96)", "1", *rpc
        )
        fee = terms_out.splitlines()[4].split()[0]
        assert int(fee) == 10**15
        deadline = w3.eth.get_block("latest")["timestamp"] + 600
        _cast(
            "send", market, "submitJob(uint256,uint96,bytes,uint32,uint64)", str(adapter_id), fee,
            _cast("from-utf8", "Hello"), "48", str(deadline), "--value", "0.01ether",
            "--private-key", dev_private_key(3), *rpc,
        )  # fmt: skip
        client = ProtocolClient(w3, deployment)
        job = client.job(1)
        assert job.submitter == Account.from_key(dev_private_key(3)).address
        assert job.input_hash == Web3.keccak(b"Hello")  # inputHash of the prompt cast encoded
        assert job.price_wei == 10**16 and job.status == JobStatus.OPEN
        state = _cast("call", market, "jobState(uint256)(uint8,address,uint256,bytes32)", "1", *rpc).split()
        assert state[0] == "1"  # Open

        # a node claims and answers (plain web3, a batch of one)
        operator, signer = Account.from_key(dev_private_key(4)), Account.from_key(dev_private_key(5))
        nodes, m = client.nodes, client.market
        send(w3, operator, nodes.functions.register(signer.address, base, "12D3KooWRecipe"), value=2 * 10**18)
        send(w3, operator, m.functions.claimJobs([job.terms.claim_key()]))
        output = b"Hello to you too"
        batch = ResultBatch(w3.eth.chain_id, market, (SignedResult.for_output(1, job.terms.hash(), output),))
        send(
            w3, operator, m.functions.submitResults([job.terms.result_entry(output)], batch.sign(signer.key))
        )

        state = _cast("call", market, "jobState(uint256)(uint8,address,uint256,bytes32)", "1", *rpc).split()
        assert state[0] == "3" and state[1] == operator.address  # Resulted, by the node
        logs = json.loads(
            _cast(
                "logs", "--address", market, RESULT_EVENT, _cast("to-uint256", "1"), *rpc, "--json",
            )
        )  # fmt: skip
        tx = logs[-1]["transactionHash"]
        decoded = _cast("calldata-decode", RESULTS_SIG, _cast("tx", tx, "input", *rpc))
        assert "0x" + output.hex() in decoded  # the output, read from the result transaction's calldata
