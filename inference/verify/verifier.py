"""Checking a result against its TOPLOC proof: one prefill over prompt + output under the job's adapter,
then, chunk by chunk, the proof's top-k activations against the recomputed ones at TOPLOC's thresholds,
and (for a greedy job) every output token against the recomputed argmax.

TOPLOC alone proves the activations belong to the claimed model, adapter and tokens; it cannot tell
whether the tokens are the ones that model would pick: a node could prefill its own edited output and
prove that honestly. The greedy check closes that for greedy jobs (a token must be the recomputed argmax,
up to `greedy_margin` in logits, which tolerates ties broken differently across hardware).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from inference.adapter import AdapterWeights
from inference.engine.messages import HiddenStates
from inference.models import LoadedModel
from inference.verify.proof import Proof, ProofFormatError, ProofParams, build_proof, load_toploc
from inference.verify.recompute import Recomputed, recompute


@dataclass(frozen=True)
class Thresholds:
    """TOPLOC's acceptance thresholds for top-128 chunks (PrimeIntellect's toploc-experiments:
    ERROR_THRESHOLDS), a chunk fails when any is exceeded. A chunk with fewer than `topk` entries (a short
    last chunk of a small model) allows proportionally fewer exponent mismatches."""

    max_exp_mismatches: int = 90  # of 128: top-k indices not shared, or sharing with another exponent
    max_mant_err_mean: float = 10.0  # bfloat16 mantissa units (7 bits) over indices with equal exponents
    max_mant_err_median: float = 8.0
    greedy_margin: float = 0.5  # a greedy token's logit may be this far below the recomputed maximum

    @classmethod
    def fp32(cls) -> Thresholds:
        """For base models served in float32 (the embedded SmolLM2, the tiny test model): honest results
        recomputed on CPU, across batch mates, thread counts and implementations, showed 0 exponent
        mismatches and 0 mantissa error (docs/verification.md), so far tighter bounds hold and catch
        smaller changes (e.g. an adapter's scale doubled) that TOPLOC's bf16-calibrated bounds let pass."""
        # every bound tighter than the defaults: a result passing these passes TOPLOC's too
        return cls(max_exp_mismatches=16, max_mant_err_mean=2.0, max_mant_err_median=1.0, greedy_margin=0.05)


@dataclass(frozen=True)
class ChunkCheck:
    index: int  # 0 is the prefill
    positions: tuple[int, int]  # token positions [start, stop) whose hidden states the chunk covers
    topk: int
    exp_mismatches: int
    mant_err_mean: float
    mant_err_median: float
    passed: bool


@dataclass(frozen=True)
class VerifyReport:
    passed: bool
    reason: str  # "" when passed; else the first failure, for an operator or a dispute record
    first_failing_chunk: int | None  # 0: the prefill; a token failing the greedy check names its chunk
    chunks: tuple[ChunkCheck, ...] = ()
    first_non_greedy_token: int | None = None  # index into the output tokens
    ends_with_eos: bool = False  # the proof covers a last step that produced EOS (decode_steps == outputs)
    recompute_s: float = 0.0  # the prefill
    seconds: float = 0.0  # everything
    # The verifier's own proof of the claimed job (same header, chunks from its recomputation): the
    # evidence a dispute publishes. Empty when the check failed before recomputing.
    evidence: bytes = b""


def _fail(reason: str, t0: float, first_failing_chunk: int | None = None) -> VerifyReport:
    return VerifyReport(False, reason, first_failing_chunk, seconds=time.perf_counter() - t0)


def eos_ids(base: LoadedModel) -> set[int]:
    """Token ids that end a generation (as the engine's): the tokenizer's EOS and the generation config's."""
    ids = {base.tokenizer.eos_token_id}
    gen = getattr(getattr(base.model, "generation_config", None), "eos_token_id", None)
    ids.update(gen if isinstance(gen, list) else [gen])
    return {int(i) for i in ids if i is not None}


def check_chunks(proof: Proof, hidden: torch.Tensor, thresholds: Thresholds) -> list[ChunkCheck]:
    """Compare every chunk of `proof` with recomputed hidden states [>= P + steps, H] (bfloat16)."""
    toploc = load_toploc()
    checks = []
    for i, ((a, b), k, poly) in enumerate(
        zip(proof.chunk_rows(), proof.chunk_topk(), proof.chunks, strict=True)
    ):
        flat = hidden[a:b].contiguous().view(1, -1)
        (r,) = toploc.verify_proofs_bytes(flat, [poly], 1, k, skip_prefill=True)
        max_exp = thresholds.max_exp_mismatches * k // proof.params.topk
        ok = (
            r.exp_mismatches <= max_exp
            and r.mant_err_mean <= thresholds.max_mant_err_mean
            and r.mant_err_median <= thresholds.max_mant_err_median
        )
        checks.append(ChunkCheck(i, (a, b), k, r.exp_mismatches, r.mant_err_mean, r.mant_err_median, ok))
    return checks


def chunk_of_output(proof: Proof, j: int) -> int:
    """The chunk holding the hidden state that produced output token j (token 0 comes from the prefill)."""
    return 0 if j == 0 else 1 + (j - 1) // proof.params.chunk


def first_non_greedy(
    states: Recomputed, prompt_len: int, targets: list[int], eos: set[int], margin: float, eos_last: bool
) -> int | None:
    """Index of the first target whose logit is more than `margin` below the maximum at its position."""
    logits = states.logits[prompt_len - 1 : prompt_len - 1 + len(targets)]
    best = logits.max(dim=-1).values
    for j, tok in enumerate(targets):
        if eos_last and j == len(targets) - 1:
            got = max(float(logits[j, e]) for e in eos if e < logits.shape[1])
        else:
            got = float(logits[j, tok])
        if float(best[j]) - got > margin:
            return j
    return None


def verify_result(
    base: LoadedModel,
    weights: AdapterWeights | None,
    prompt_ids: list[int],
    output_ids: list[int],
    proof_bytes: bytes,
    *,
    greedy: bool = True,
    params: ProofParams | None = None,
    thresholds: Thresholds | None = None,
) -> VerifyReport:
    """Verify one result. `base`: the job's base model, not owned by an Engine; `weights`: the job's
    adapter, already validated (None: the bare base model); `prompt_ids`: the job's input as the engine
    encodes it (inference.prompt.encode_prompt / check_prompt); `output_ids`: the result's tokens (no EOS);
    `greedy`: the job asked for temperature 0 (then every token is checked against the argmax too).
    Never raises for a bad proof or result (that is a failed report); raises for a bad set-up."""
    t0 = time.perf_counter()
    params = params or ProofParams()
    thresholds = thresholds or Thresholds()
    try:
        proof = Proof.from_bytes(proof_bytes)
    except ProofFormatError as e:
        return _fail(f"malformed proof: {e}", t0)
    if proof.params != params:
        return _fail(
            f"proof uses top-{proof.params.topk} / chunks of {proof.params.chunk}, "
            f"the scheme requires top-{params.topk} / chunks of {params.chunk}",
            t0,
        )
    hidden_size = int(base.model.config.hidden_size)
    if proof.hidden_size != hidden_size:
        return _fail(
            f"proof is of hidden size {proof.hidden_size}, the base model's is {hidden_size}: "
            "another base model",
            t0,
            first_failing_chunk=0,
        )
    if proof.prompt_len != len(prompt_ids):
        return _fail(
            f"proof covers a prompt of {proof.prompt_len} tokens, the job's encodes to "
            f"{len(prompt_ids)}: a truncated or padded prompt",
            t0,
            first_failing_chunk=0,
        )
    n, steps = len(output_ids), proof.decode_steps
    if steps not in (n - 1, n) or (n == 0 and steps != 0):
        return _fail(
            f"proof covers {steps} decode steps; {n} output tokens need {max(n - 1, 0)} "
            f"(or {n} when the last produced EOS)",
            t0,
        )
    eos_last = steps == n
    tokens = list(prompt_ids) + list(output_ids[:steps])
    vocab = int(base.model.config.vocab_size)
    bad_id = next((t for t in [*prompt_ids, *output_ids] if not 0 <= int(t) < vocab), None)
    if bad_id is not None:
        return _fail(f"token id {bad_id} is outside the base model's vocabulary of {vocab}", t0)
    max_positions = int(getattr(base.model.config, "max_position_embeddings", 1 << 16))
    if len(tokens) > max_positions:
        return _fail(f"prompt + output of {len(tokens)} tokens exceed the model's {max_positions}", t0)
    t1 = time.perf_counter()
    states = recompute(base, weights, tokens)
    recompute_s = time.perf_counter() - t1
    checks = check_chunks(proof, states.hidden, thresholds)
    p = len(prompt_ids)
    evidence = build_proof(HiddenStates(list(prompt_ids), states.hidden[:p], states.hidden[p:]), params)
    failing = next((c for c in checks if not c.passed), None)
    bad_token = None
    if greedy:
        targets = list(output_ids) + ([-1] if eos_last else [])
        bad_token = first_non_greedy(
            states, len(prompt_ids), targets, eos_ids(base), thresholds.greedy_margin, eos_last
        )
    candidates = [failing.index] if failing is not None else []
    if bad_token is not None:
        candidates.append(chunk_of_output(proof, bad_token))
    first = min(candidates, default=None)
    reason = ""
    if failing is not None and first == failing.index:
        reason = (
            f"chunk {failing.index} (positions {failing.positions[0]}..{failing.positions[1] - 1}) does not "
            f"match: {failing.exp_mismatches}/{failing.topk} exponent mismatches, mantissa error mean "
            f"{failing.mant_err_mean:.2f} median {failing.mant_err_median:.2f}"
        )
    elif bad_token is not None:
        what = "EOS" if eos_last and bad_token == n else f"output token {bad_token} ({output_ids[bad_token]})"
        reason = f"{what} is not the greedy choice of the claimed model and adapter"
    return VerifyReport(
        passed=first is None,
        reason=reason,
        first_failing_chunk=first,
        chunks=tuple(checks),
        first_non_greedy_token=bad_token,
        ends_with_eos=eos_last,
        recompute_s=recompute_s,
        seconds=time.perf_counter() - t0,
        evidence=evidence.to_bytes(),
    )
