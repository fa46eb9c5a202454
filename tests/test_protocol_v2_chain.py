"""The Python side of protocol v2 against the compiled contracts on Anvil: terms decoded from
JobSubmitted hash exactly as the market hashes them; a batch signed with eth-account is accepted;
CREATE2 addresses are stable."""

from __future__ import annotations

import pytest
from eth_account import Account
from eth_utils import keccak
from web3 import HTTPProvider, Web3

from chain.deployment import ProtocolParams, deploy
from chain.devnet import Anvil, dev_private_key
from chain.signing import ResultBatch, SignedResult
from chain.terms import Terms

BASE = keccak(text="tiny-llama")


def _send(w3: Web3, acct, fn, value: int = 0) -> dict:
    tx = fn.build_transaction(
        {"from": acct.address, "value": value, "nonce": w3.eth.get_transaction_count(acct.address, "pending")}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(acct.sign_transaction(tx).raw_transaction)
    )
    assert receipt["status"] == 1, receipt
    return receipt


@pytest.fixture
def chain():
    with Anvil() as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        deployer, operator, signer, submitter = (Account.from_key(dev_private_key(i)) for i in range(4))
        d = deploy(w3, deployer)
        yield w3, d, deployer, operator, signer, submitter


def test_create2_addresses_do_not_depend_on_the_chain_or_nonce(chain) -> None:
    w3, d, deployer, *_ = chain
    with Anvil() as other:
        w3b = Web3(HTTPProvider(other.url))
        # burn a few nonces first: CREATE2 addresses must not move with the deployer's nonce
        for _ in range(3):
            tx = {
                "to": deployer.address,
                "value": 1,
                "gas": 21000,
                "nonce": w3b.eth.get_transaction_count(deployer.address),
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
                "chainId": w3b.eth.chain_id,
            }
            w3b.eth.wait_for_transaction_receipt(
                w3b.eth.send_raw_transaction(deployer.sign_transaction(tx).raw_transaction)
            )
        d2 = deploy(w3b, deployer)
    assert (d2.adapter_registry, d2.job_market, d2.node_registry, d2.arbiter) == (
        d.adapter_registry,
        d.job_market,
        d.node_registry,
        d.arbiter,
    )
    again = deploy(w3, deployer)  # re-running finds the contracts in place
    assert again.job_market == d.job_market


def test_terms_hash_and_batch_signature_match_the_market(chain) -> None:
    w3, d, deployer, operator, signer, submitter = chain
    adapters = d.contract(w3.eth, "AdapterRegistry")
    market = d.contract(w3.eth, "JobMarket")
    nodes = d.contract(w3.eth, "NodeRegistry")
    fee = Web3.to_wei(0.001, "ether")
    _send(w3, deployer, adapters.functions.register("bafy" + "a" * 55, keccak(b"w"), BASE, 8, 65536, fee))
    _send(
        w3,
        operator,
        nodes.functions.register(signer.address, BASE, "12D3KooW" + "x" * 44),
        value=Web3.to_wei(2, "ether"),
    )
    deadline = w3.eth.get_block("latest")["timestamp"] + 600
    terms = []
    for i in range(3):
        receipt = _send(
            w3,
            submitter,
            market.functions.submitJob(1, fee, f"prompt {i}".encode(), 32, deadline),
            value=Web3.to_wei(0.01, "ether"),
        )
        (event,) = market.events.JobSubmitted().process_receipt(receipt)
        t = Terms.from_abi(event["args"]["terms"])
        assert t.hash() == bytes(market.functions.hashTerms(t.as_abi()).call())
        # the compact keys the node builds are the chain's own (keysOf)
        head, words, body, rest = market.functions.keysOf(t.as_abi()).call()
        assert (head, list(words), bytes(body)) == t.claim_key()
        assert bytes(rest) == t.rest_hash()
        assert t.node_amount == Web3.to_wei(0.01, "ether") - fee - Web3.to_wei(0.0001, "ether")
        terms.append(t)
    _send(w3, operator, market.functions.claimJobs([t.claim_key() for t in terms]))
    outputs = [f"answer {i}".encode() for i in range(3)]
    batch = ResultBatch(
        w3.eth.chain_id,
        market.address,
        tuple(SignedResult.for_output(t.job_id, t.hash(), o) for t, o in zip(terms, outputs, strict=True)),
    )
    one = ResultBatch(w3.eth.chain_id, market.address, batch.results[:1])
    r0 = batch.results[0]
    assert one.digest() == bytes(
        market.functions.resultDigest(r0.job_id, r0.terms_hash, r0.output_hash, r0.proof_hash).call()
    )
    items = [t.result_entry(o) for t, o in zip(terms, outputs, strict=True)]
    # a signature over a subset is refused for the whole batch
    wrong_signer = "0x" + keccak(text="WrongSigner(address,address)")[:4].hex()
    with pytest.raises(Exception, match=wrong_signer):
        market.functions.submitResults(items, one.sign(signer.key)).call({"from": operator.address})
    receipt = _send(w3, operator, market.functions.submitResults(items, batch.sign(signer.key)))
    paid = market.events.ResultSubmitted().process_receipt(receipt)
    assert [e["args"]["jobId"] for e in paid] == [t.job_id for t in terms]
    assert sum(e["args"]["nodeAmount"] for e in paid) == market.functions.heldOf(operator.address).call()


def test_default_params_satisfy_the_market_checks() -> None:
    p = ProtocolParams()
    assert p.unstake_delay_s > p.challenge_window_s + p.dispute_timeout_s
    assert p.release_penalty_wei <= p.min_claim_stake_wei


def test_forge_script_and_python_deploy_the_same_addresses(chain) -> None:
    from chain.deployment import deploy_with_forge_script

    _w3, d, *_ = chain
    with Anvil() as other:
        forged = deploy_with_forge_script(other.url, dev_private_key(0))
        w3b = Web3(HTTPProvider(other.url))
        assert w3b.eth.get_code(forged.job_market) and w3b.eth.get_code(forged.arbiter)
    assert (forged.adapter_registry, forged.node_registry, forged.job_market, forged.arbiter) == (
        d.adapter_registry,
        d.node_registry,
        d.job_market,
        d.arbiter,
    )
