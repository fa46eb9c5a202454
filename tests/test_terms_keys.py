"""chain/terms.py keys and chain/results.py decoding, without a chain: the terms hash written out word by
word, any other field gives another hash, and results decoded from submitResult(s) calldata (inline and by
CID, several adapters) give back the job, terms hash, fees and output the node posted."""

from __future__ import annotations

import dataclasses

from eth_abi import encode
from eth_utils import keccak
from web3 import Web3

from chain.artifacts import load_artifact
from chain.results import batch_of, decode_results
from chain.signing import ZERO32, ResultBatch, SignedResult
from chain.terms import AdapterTerm, Terms, adapter_fields, head_fields

SUBMITTER = "0x72E1e87203fC4330068d7b8812B0191d5CbA040F"


def _terms(job_id: int = 7, n_adapters: int = 2) -> Terms:
    adapters = tuple(
        AdapterTerm(10 + i, 5_000, 10**15 + i, keccak(text=f"adapter {i}")) for i in range(n_adapters)
    )
    return Terms(
        job_id, SUBMITTER, 10**16, 1_700_000_000, 1_700_003_600, 600, 64, 100,
        keccak(text="tiny-llama"), keccak(b"prompt"), adapters,
    )  # fmt: skip


def _market():
    return Web3().eth.contract(abi=load_artifact("JobMarket").abi)


def test_the_terms_hash_written_out_word_by_word() -> None:
    t = _terms()
    head = (
        (t.job_id << 192) | (t.price << 96) | (t.submitted_at << 56) | (t.deadline << 16) | t.protocol_fee_bps
    )
    assert t.head == head
    assert head_fields(head) == (t.job_id, t.price, t.submitted_at, t.deadline, t.protocol_fee_bps)
    assert [adapter_fields(w) for w in t.adapter_words] == [(a.id, a.fee) for a in t.adapters]
    body_words = [
        int(SUBMITTER, 16).to_bytes(32, "big"),
        t.service_window.to_bytes(32, "big"),
        t.max_tokens.to_bytes(32, "big"),
        t.input_hash,
    ]
    for a in t.adapters:
        body_words += [a.weight_bps.to_bytes(32, "big"), a.content_hash]
    body = keccak(b"".join(body_words))
    rest = keccak(t.base_model + body)
    words = b"".join(w.to_bytes(32, "big") for w in t.adapter_words)
    assert t.body_hash() == body and t.rest_hash() == rest
    assert t.hash() == keccak(head.to_bytes(32, "big") + rest + words)
    assert t.claim_key() == (head, t.adapter_words, body)
    assert t.result_entry(b"out")[:3] == (head, t.adapter_words, rest)


def test_any_other_field_gives_another_hash() -> None:
    t = _terms()
    changes = {
        "job_id": 8, "price": t.price + 1, "submitted_at": t.submitted_at + 1, "deadline": t.deadline + 1,
        "service_window": 601, "max_tokens": 65, "protocol_fee_bps": 101, "base_model": keccak(text="other"),
        "input_hash": keccak(b"other"), "submitter": "0x" + "11" * 20, "adapters": t.adapters[:1],
    }  # fmt: skip
    hashes = {dataclasses.replace(t, **{name: value}).hash() for name, value in changes.items()}
    assert t.hash() not in hashes and len(hashes) == len(changes)
    swapped = dataclasses.replace(t, adapters=t.adapters[::-1])
    assert swapped.hash() != t.hash()  # the adapters' order is part of the terms


def test_results_decode_from_calldata_inline_and_by_cid() -> None:
    market = _market()
    a, b = _terms(7), _terms(8, n_adapters=1)
    proof = keccak(text="proof")
    cid_hash = keccak(b"kept off chain")
    entries = [a.result_entry(b"inline answer", proof), b.result_entry_by_cid("bafyoutput", cid_hash)]
    batch = ResultBatch(
        31337,
        "0x" + "22" * 20,
        (SignedResult.for_output(7, a.hash(), b"inline answer", proof), SignedResult(8, b.hash(), cid_hash)),
    )
    calldata = market.encode_abi("submitResults", args=[entries, b"\x01" * 65])
    items, signature = decode_results(market, calldata)
    assert signature == b"\x01" * 65
    first, second = items
    assert (first.job_id, first.terms_hash, first.output, first.output_cid) == (
        7,
        a.hash(),
        b"inline answer",
        "",
    )
    assert first.output_hash == keccak(b"inline answer") and first.proof_hash == proof
    assert first.adapter_fees == a.adapter_fees and first.protocol_amount == a.protocol_amount
    assert (second.job_id, second.output, second.output_cid, second.output_hash) == (
        8,
        b"",
        "bafyoutput",
        cid_hash,
    )
    assert second.proof_hash == ZERO32
    # the batch rebuilt from calldata is the one the node signed
    assert batch_of(31337, "0x" + "22" * 20, items).digest() == batch.digest()
    single = market.encode_abi("submitResult", args=[entries[0], b"\x02" * 65])
    (only,), _ = decode_results(market, single)
    assert only.job_id == 7 and only.terms_hash == a.hash()
    assert encode(["uint256"], [a.head])[:8] == (7).to_bytes(8, "big")  # the job id is the head's top 64 bits
