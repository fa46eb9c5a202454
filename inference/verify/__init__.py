"""Verifiable results: TOPLOC proofs of the hidden states a generation computed, and their verifier.

- proof.py      Proof (wire format, keccak256 hash), build_proof / prove from recorded hidden states
- recompute.py  one prefill over prompt + output under an adapter, with the base model's own forward
- verifier.py   verify_result: chunk-by-chunk comparison at TOPLOC's thresholds, plus the greedy check

Node side: submit with GenerationRequest(record_hidden=True), then `prove(result).to_bytes()`; sign
`proof_hash(proof_bytes)`. Verifier side: `verify_result(base, weights, prompt_ids, output_ids, proof_bytes)`.
See docs/verification.md.
"""

from inference.verify.proof import (
    HEADER_BYTES,
    Proof,
    ProofFormatError,
    ProofParams,
    ToplocMissing,
    build_proof,
    proof_hash,
    prove,
)
from inference.verify.recompute import Recomputed, load_peft_weights, recompute
from inference.verify.verifier import ChunkCheck, Thresholds, VerifyReport, verify_result

__all__ = [
    "HEADER_BYTES",
    "ChunkCheck",
    "Proof",
    "ProofFormatError",
    "ProofParams",
    "Recomputed",
    "Thresholds",
    "ToplocMissing",
    "VerifyReport",
    "build_proof",
    "load_peft_weights",
    "proof_hash",
    "prove",
    "recompute",
    "verify_result",
]
