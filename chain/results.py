"""Reading results back from a submitResult(s) transaction: v2 keeps outputs in calldata only."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak

from chain.signing import ZERO32, ResultBatch, SignedResult
from chain.terms import BPS, adapter_fields, head_fields, key_hash


@dataclass(frozen=True)
class PostedResult:
    """One ResultEntry as posted: the job it names (by key) and the output."""

    job_id: int
    terms_hash: bytes
    price: int
    protocol_fee_bps: int
    adapter_fees: int
    output: bytes
    output_cid: str
    output_hash: bytes
    proof_hash: bytes

    @property
    def protocol_amount(self) -> int:
        return self.price * self.protocol_fee_bps // BPS


def _posted(entry) -> PostedResult:
    get = (
        (lambda k, i: entry[k])
        if isinstance(entry, dict) or hasattr(entry, "keys")
        else (lambda k, i: entry[i])
    )
    head, words, rest = get("head", 0), list(get("adapters", 1)), bytes(get("restHash", 2))
    data, given_hash, proof = bytes(get("output", 3)), bytes(get("outputHash", 4)), bytes(get("proofHash", 5))
    job_id, price, _at, _deadline, bps = head_fields(head)
    by_cid = given_hash != ZERO32
    return PostedResult(
        job_id,
        key_hash(head, rest, words),
        price,
        bps,
        sum(adapter_fields(w)[1] for w in words),
        b"" if by_cid else data,
        data.decode("utf-8", "replace") if by_cid else "",
        given_hash if by_cid else keccak(data),
        proof,
    )


def decode_results(market, tx_input: bytes | str) -> tuple[list[PostedResult], bytes]:
    """The entries and the signature of a submitResult / submitResults call."""
    fn, params = market.decode_function_input(tx_input)
    name = fn.fn_name
    if name == "submitResult":
        raw = [params["item"]]
    elif name == "submitResults":
        raw = list(params["items"])
    else:
        raise ValueError(f"transaction calls {name}, not submitResult(s)")
    return [_posted(e) for e in raw], bytes(params["signature"])


def batch_of(chain_id: int, market_address: str, items: list[PostedResult]) -> ResultBatch:
    """The ResultBatch the node signed for these items (in their order)."""
    return ResultBatch(
        chain_id,
        market_address,
        tuple(SignedResult(i.job_id, i.terms_hash, i.output_hash, i.proof_hash) for i in items),
    )
