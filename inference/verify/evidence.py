"""What a node publishes with each result so that anyone can check it: the output's token ids and the
TOPLOC proof of the hidden states that produced them, in one content-addressed block.

The node signs `evidence_hash(bundle)` (sha256) as the result's proofHash, and serves the bundle as a raw
IPFS block; its CID (CIDv1, raw, sha2-256) follows from the hash alone, so a verifier needs nothing but the
chain to find it. `check_job_result` is the whole check a verifier makes: the token ids decode to the posted
output, and one prefill under the job's adapter reproduces the proof (inference/verify/verifier.py)."""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass

from multiformats import CID, multihash

from inference.adapter import AdapterWeights
from inference.models import LoadedModel
from inference.prompt import decode_output, encode_prompt
from inference.verify.proof import ProofFormatError
from inference.verify.verifier import Thresholds, VerifyReport, verify_result

MAGIC = b"OLRE"
VERSION = 1
_HEAD = struct.Struct(">4sBI")  # magic, version, token count
MAX_TOKENS = 1 << 16


class EvidenceFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ResultEvidence:
    token_ids: tuple[int, ...]
    proof: bytes

    def to_bytes(self) -> bytes:
        return (
            _HEAD.pack(MAGIC, VERSION, len(self.token_ids))
            + struct.pack(f">{len(self.token_ids)}I", *self.token_ids)
            + self.proof
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ResultEvidence:
        if len(data) < _HEAD.size:
            raise EvidenceFormatError(f"evidence of {len(data)} bytes is shorter than its header")
        magic, version, n = _HEAD.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise EvidenceFormatError(f"not version-{VERSION} result evidence (magic {magic!r})")
        if n > MAX_TOKENS or len(data) < _HEAD.size + 4 * n:
            raise EvidenceFormatError(f"evidence names {n} tokens but holds {len(data) - _HEAD.size} bytes")
        ids = struct.unpack_from(f">{n}I", data, _HEAD.size)
        return cls(tuple(ids), bytes(data[_HEAD.size + 4 * n :]))


def evidence_hash(data: bytes) -> bytes:
    """sha256 of the bundle: the proofHash a node signs with its result."""
    return hashlib.sha256(data).digest()


def evidence_cid(digest: bytes) -> str:
    """The raw-block CID (v1, sha2-256) of the bundle whose sha256 is `digest`."""
    return str(CID("base32", 1, "raw", multihash.wrap(digest, "sha2-256")))


@dataclass(frozen=True)
class JobCheck:
    passed: bool
    reason: str
    first_failing_chunk: int | None
    verify_s: float
    report: VerifyReport | None = None


def check_job_result(
    base: LoadedModel,
    weights: AdapterWeights | None,
    input_bytes: bytes,
    output: bytes,
    evidence: bytes | None,
    *,
    thresholds: Thresholds | None = None,
) -> JobCheck:
    """Check a posted greedy result against its evidence. `base` must be a model no Engine owns; `weights`
    the job's validated adapter. Never raises for a bad result (a failed check says why)."""
    t0 = time.perf_counter()

    def fail(reason: str, chunk: int | None = None) -> JobCheck:
        return JobCheck(False, reason, chunk, time.perf_counter() - t0)

    if evidence is None:
        return fail("no evidence: the node did not publish the proof it signed")
    try:
        ev = ResultEvidence.from_bytes(evidence)
    except (EvidenceFormatError, struct.error) as e:
        return fail(f"malformed evidence: {e}")
    tok = base.tokenizer
    if decode_output(tok, list(ev.token_ids)).encode("utf-8") != output:
        return fail("the posted output is not what the evidence's token ids decode to (edited output)", 0)
    try:
        prompt_ids = encode_prompt(tok, input_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        return fail("the job's input is not UTF-8 text")
    try:
        report = verify_result(base, weights, prompt_ids, list(ev.token_ids), ev.proof, thresholds=thresholds)
    except ProofFormatError as e:
        return fail(f"malformed proof: {e}")
    return JobCheck(
        report.passed, report.reason, report.first_failing_chunk, time.perf_counter() - t0, report
    )
