"""TOPLOC proofs and their verifier (inference/verify/), against real engines on the tiny model: honest
results verify (mixed batches, different batch mates, 1 vs 2 threads), dishonest ones fail, and the
deterministic mode is batch-invariant. SmolLM2's share is in test_verify_smollm2.py."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from eth_utils import keccak

from inference.adapter import AdapterWeights
from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.models import LoadedModel, tiny_llama
from inference.verify import HEADER_BYTES, Proof, ProofParams, Thresholds, VerifyReport, prove, verify_result
from tests.verify_cases import (
    KINDS,
    Claim,
    cheat_adapters,
    dishonest_claim,
    engine_with,
    honest_claims,
    make_adapters,
)


@pytest.fixture(scope="module")
def verifier_base() -> LoadedModel:
    return tiny_llama(0)  # a copy of its own: an Engine wraps its base model's layers in place


@pytest.fixture(scope="module")
def adapters(
    tmp_path_factory: pytest.TempPathFactory, verifier_base: LoadedModel
) -> dict[str, AdapterWeights]:
    return make_adapters(verifier_base, tmp_path_factory.mktemp("verify-adapters"))


def check(
    base: LoadedModel, adapters: dict[str, AdapterWeights], claim: Claim, thresholds: Thresholds | None = None
) -> VerifyReport:
    weights = adapters[claim.adapter] if claim.adapter else None
    return verify_result(
        base,
        weights,
        claim.prompt_ids,
        claim.output_ids,
        claim.proof,
        greedy=claim.greedy,
        thresholds=thresholds,
    )


def test_proof_bytes_hash_and_format(verifier_base: LoadedModel, adapters: dict[str, AdapterWeights]) -> None:
    engine = engine_with(tiny_llama(0), adapters)
    res = engine.generate_batch_sync(
        [GenerationRequest("the quick brown fox", "r4-attn", max_tokens=70, record_hidden=True)]
    )[0]
    proof = prove(res)
    data = proof.to_bytes()
    steps = len(res.token_ids) - (0 if res.finish_reason == "stop" else 1)
    assert proof.prompt_len == len(res.hidden.prompt_ids) and proof.decode_steps == steps
    assert len(proof.chunks) == 1 + -(-steps // 32)
    assert all(len(c) == 258 for c in proof.chunks[:-1]), "top-128 chunks are 258 bytes (TOPLOC's figure)"
    assert len(data) == HEADER_BYTES + sum(len(c) for c in proof.chunks)
    assert Proof.from_bytes(data) == proof and proof.hash == keccak(data) and len(proof.hash) == 32
    ids = res.hidden.prompt_ids
    report = verify_result(verifier_base, adapters["r4-attn"], ids, res.token_ids, data)
    assert report.passed and report.evidence, "a check that recomputed carries the verifier's own proof"
    assert verify_result(verifier_base, adapters["r4-attn"], ids, res.token_ids, report.evidence).passed
    wrong = verify_result(verifier_base, adapters["r16-all"], ids, res.token_ids, data)
    assert not wrong.passed and Proof.from_bytes(wrong.evidence).chunks != proof.chunks
    report = verify_result(verifier_base, None, ids, [*res.token_ids[:-1], 10**6], data)
    assert not report.passed and "outside the base model's vocabulary" in report.reason
    for bad, why in [
        (data[:-1], "malformed proof"),
        (data + b"\0", "malformed proof"),
        (b"XXXX" + data[4:], "malformed proof"),
        (b"", "malformed proof"),
    ]:
        report = verify_result(verifier_base, adapters["r4-attn"], ids, res.token_ids, bad)
        assert not report.passed and report.reason.startswith(why), report.reason
    weak = replace(proof, params=ProofParams(topk=8)).to_bytes()[:HEADER_BYTES]  # a forged, weaker scheme
    weak += b"".join(c[: 2 + 16] for c in proof.chunks)
    report = verify_result(verifier_base, adapters["r4-attn"], ids, res.token_ids, weak)
    assert not report.passed and "requires top-128" in report.reason
    with pytest.raises(ValueError, match="record_hidden=True"):
        prove(engine.generate_batch_sync([GenerationRequest("x", None, max_tokens=2)])[0])


def test_verifier_refuses_a_base_model_owned_by_an_engine(adapters: dict[str, AdapterWeights]) -> None:
    engine = engine_with(tiny_llama(0), adapters)
    res = engine.generate_batch_sync([GenerationRequest("hi", None, max_tokens=3, record_hidden=True)])[0]
    with pytest.raises(ValueError, match="load a separate copy"):
        verify_result(engine.base, None, res.hidden.prompt_ids, res.token_ids, prove(res).to_bytes())


def test_honest_results_verify(verifier_base: LoadedModel, adapters: dict[str, AdapterWeights]) -> None:
    """480 results (the other 20 of the 500 are SmolLM2's): mixed batches, generated with 1 thread and
    verified with 2, and the reverse; one engine in deterministic mode. Zero false failures."""
    rng = random.Random(16)
    names = list(adapters)
    failures, total, chunks, eos = [], 0, 0, 0
    for gen_threads, verify_threads, count, config in [
        (1, 2, 200, {}),
        (2, 1, 200, {}),
        (2, 2, 80, {"deterministic": True, "max_batch": 4}),
    ]:
        torch.set_num_threads(gen_threads)
        claims = honest_claims(engine_with(tiny_llama(0), adapters, **config), names, rng, count)
        torch.set_num_threads(verify_threads)
        for claim in claims:
            total += 1
            # passing the float32 thresholds implies passing TOPLOC's: each bound is tighter
            report = check(verifier_base, adapters, claim, Thresholds.fp32())
            chunks += len(report.chunks)
            eos += report.ends_with_eos
            if not report.passed:
                failures.append((claim.adapter, len(claim.output_ids), report.reason))
    assert total == 480 and chunks > 900 and eos > 0, "some results end at EOS (a proof step more)"
    assert not failures, failures[:5]


def test_dishonest_results_fail(verifier_base: LoadedModel, adapters: dict[str, AdapterWeights]) -> None:
    """190 dishonest results, 19 of each kind (the other 10 of the 200 are SmolLM2's): all caught at the
    float32 thresholds these models run at. TOPLOC's own bf16-calibrated thresholds catch every kind but
    let some scale changes through (activations moved less than cross-GPU noise, tokens unchanged)."""
    torch.set_num_threads(2)
    rng = random.Random(61)
    cheat = engine_with(tiny_llama(0), cheat_adapters(adapters))
    other_base = engine_with(tiny_llama(1), adapters)
    missed, caught_at, missed_at_toploc_thresholds = [], {}, []
    for i in range(190):
        kind = KINDS[i % len(KINDS)]
        claim = dishonest_claim(kind, cheat, other_base, verifier_base, adapters, rng)
        report = check(verifier_base, adapters, claim, Thresholds.fp32())
        if check(verifier_base, adapters, claim).passed:
            missed_at_toploc_thresholds.append(kind)
        if report.passed:
            missed.append((kind, claim.adapter, claim.output_ids))
        else:
            assert report.reason, "a failure says why"
            if any(not c.passed for c in report.chunks):
                caught_at.setdefault(kind, set()).add("chunk")
            if report.first_non_greedy_token is not None:
                caught_at.setdefault(kind, set()).add("greedy")
    assert not missed, missed
    assert set(missed_at_toploc_thresholds) <= {"scale"} and len(missed_at_toploc_thresholds) <= 4
    assert len(caught_at) == len(KINDS)
    assert "greedy" in caught_at["sampled"] and "greedy" in caught_at["edited-reproved"]
    assert caught_at["another-adapter"] >= {"chunk"}


def test_deterministic_mode_is_batch_invariant(adapters: dict[str, AdapterWeights]) -> None:
    """The same request alone and among different batch mates (other adapters, lengths, positions in the
    batch, mates joining and leaving mid-decode): identical tokens and bit-identical hidden states."""
    torch.set_num_threads(2)
    engine = engine_with(tiny_llama(0), adapters, deterministic=True)
    rng = random.Random(3)
    names = [None, *adapters]
    for target_adapter in ("r16-all", None):
        target = GenerationRequest(
            "the lazy dog jumps over", target_adapter, max_tokens=40, record_hidden=True
        )
        alone = engine.generate_batch_sync([target])[0]
        for _ in range(6):
            mates = [
                GenerationRequest("x " * rng.randint(1, 30), rng.choice(names), max_tokens=rng.randint(1, 50))
                for _ in range(rng.randint(1, 7))
            ]
            at = rng.randint(0, len(mates))
            got = engine.generate_batch_sync([*mates[:at], target, *mates[at:]])[at]
            assert got.token_ids == alone.token_ids
            assert torch.equal(got.hidden.prefill, alone.hidden.prefill)
            assert torch.equal(got.hidden.decode, alone.hidden.decode)


def test_deterministic_mode_tokens_equal_the_default_mode(adapters: dict[str, AdapterWeights]) -> None:
    """Same greedy tokens as the batched default on these requests (it changes bits, not the model)."""
    rng = random.Random(9)
    reqs = [
        GenerationRequest("a b c " * rng.randint(1, 5), rng.choice([None, *adapters]), max_tokens=20)
        for _ in range(8)
    ]
    default = Engine(tiny_llama(0), EngineConfig(max_slots=4, max_rank=16))
    det = Engine(tiny_llama(0), EngineConfig(max_slots=4, max_rank=16, deterministic=True))
    for e in (default, det):
        for k, w in adapters.items():
            e.add_adapter(k, w)
    assert [r.token_ids for r in default.generate_batch_sync(reqs)] == [
        r.token_ids for r in det.generate_batch_sync(reqs)
    ]


def test_adapter_folder_path(tmp_path: Path, verifier_base: LoadedModel) -> None:
    """A verifier given a validated PEFT folder (load_peft_weights) checks a result served from it."""
    from inference.verify import load_peft_weights
    from tests.factories import make_peft_adapter

    folder = make_peft_adapter(verifier_base, tmp_path / "a", rank=2, seed=7)
    engine = engine_with(tiny_llama(0), {"a": load_peft_weights(folder)})
    res = engine.generate_batch_sync([GenerationRequest("proof", "a", max_tokens=12, record_hidden=True)])[0]
    report = verify_result(
        verifier_base, load_peft_weights(folder), res.hidden.prompt_ids, res.token_ids, prove(res).to_bytes()
    )
    assert report.passed and report.recompute_s > 0 and report.first_failing_chunk is None
