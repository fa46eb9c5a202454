"""Reading results back from a submitResult(s) transaction: v2 keeps outputs in calldata only."""

from __future__ import annotations

from dataclasses import dataclass

from eth_utils import keccak

from chain.signing import ResultBatch, SignedResult
from chain.terms import Terms


@dataclass(frozen=True)
class PostedResult:
    terms: Terms
    output: bytes
    output_cid: str
    output_hash: bytes
    proof_hash: bytes


def decode_results(market, tx_input: bytes | str) -> tuple[list[PostedResult], bytes]:
    """The items and the signature of a submitResult / submitResults call."""
    fn, params = market.decode_function_input(tx_input)
    name = fn.fn_name
    if name == "submitResult":
        raw = [params["item"]]
    elif name == "submitResults":
        raw = list(params["items"])
    else:
        raise ValueError(f"transaction calls {name}, not submitResult(s)")
    items = []
    for it in raw:
        get = (lambda k, i, it=it: it[k]) if isinstance(it, dict) else (lambda k, i, it=it: it[i])
        output = bytes(get("output", 1))
        items.append(
            PostedResult(
                Terms.from_abi(get("terms", 0)),
                output,
                get("outputCid", 2),
                keccak(output) if output else bytes(get("outputHash", 3)),
                bytes(get("proofHash", 4)),
            )
        )
    return items, bytes(params["signature"])


def batch_of(chain_id: int, market_address: str, items: list[PostedResult]) -> ResultBatch:
    """The ResultBatch the node signed for these items (in their order)."""
    return ResultBatch(
        chain_id,
        market_address,
        tuple(SignedResult(i.terms.job_id, i.terms.hash(), i.output_hash, i.proof_hash) for i in items),
    )
