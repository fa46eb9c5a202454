"""What TOPLOC proofs cost and what verifying one costs. Prints one JSON object.

Times are process CPU seconds by default (`--clock cpu`): on a CPU shared with other work, wall time
mostly measures the neighbours; `--clock wall` on a quiet machine.

All in one run, on the embedded SmolLM2-135M (float32, CPU) when it is prepared, else the tiny model:
- proof size: bytes of a full chunk (32 decode tokens) and of the whole proof of each job (goal <= 300 / 32);
- proof-building overhead on generation (goal <= 2 %): recording's cost per decode step, measured by
  alternating the same step with and without it (paired, so a noisy neighbour on a shared CPU cancels),
  plus `prove()` of every result as a share of the batch's generation time; and, for reference, the
  end-to-end wall time of the same batch without and with recording + proofs, interleaved `--reps` times
  (best of each; on a shared CPU this one is mostly noise);
- verification / generation for the same job: one request generated alone, then `verify_result` on it
  (one prefill + the chunk checks; goal <= 0.1);
- deterministic mode: tokens/s of the same batch with EngineConfig(deterministic=True) vs the default.

Usage: python scripts/bench/verify.py [--model smollm2|tiny] [--tokens 64] [--batch 4] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from inference.embedded import is_prepared, load_smollm2  # noqa: E402
from inference.engine import Engine, GenerationRequest  # noqa: E402
from inference.models import LoadedModel, tiny_llama  # noqa: E402
from inference.verify import HEADER_BYTES, Thresholds, load_peft_weights, prove, verify_result  # noqa: E402
from tests.factories import make_peft_adapter  # noqa: E402
from tests.verify_cases import engine_with  # noqa: E402

PROMPTS = [
    "Explain what a LoRA adapter is to a new engineer.",
    "Write a short story about a lighthouse keeper.",
    "List five uses of a hash function.",
    "What is the capital of France and why is it famous?",
    "Describe how a decentralized compute market pays its nodes.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "Summarize the rules of chess in a few sentences.",
]


CLOCK = time.process_time  # --clock; set in main()


def record_ops_s(rows: int, hidden: int, reps: int = 2000) -> float:
    """What recording adds to one decode step, timed alone (immune to a noisy neighbour): the bf16 copy
    of the step's final hidden states, split per row, one clone per row, and its share of the final stack."""
    normed = torch.randn(rows, 1, hidden)
    t0 = time.perf_counter()
    for _ in range(reps):
        kept = [h.clone() for h in normed[:, 0].to(torch.bfloat16).unbind(0)]
    torch.stack(kept * 32)
    return (time.perf_counter() - t0) / reps


def load(model: str) -> LoadedModel:
    return load_smollm2(prepare=False) if model == "smollm2" else tiny_llama(0)


def batch(n: int, tokens: int, record: bool) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            PROMPTS[i % len(PROMPTS)], "a" if i % 2 else None, max_tokens=tokens, record_hidden=record
        )
        for i in range(n)
    ]


def run_batch(
    engine: Engine, reqs: list[GenerationRequest], prove_all: bool
) -> tuple[float, float, int, list]:
    """(seconds including proofs, seconds of prove() alone, tokens, proofs)."""
    t0 = CLOCK()
    results = engine.generate_batch_sync(reqs)
    t1 = CLOCK()
    proofs = [prove(r) for r in results] if prove_all else []
    t2 = CLOCK()
    return t2 - t0, t2 - t1, sum(len(r.token_ids) for r in results), proofs


def paired_step_overhead(engine: Engine, rows: int, pairs: int) -> tuple[float, float]:
    """Recording's cost per forward pass, measured where it happens: the same decode step (same rows,
    same positions: the KV writes are idempotent) with and without record=True, alternated `pairs` times.
    Returns (median seconds of a plain step, median of the paired differences)."""
    runner = engine.runner
    prompts = [engine.tokenizer(p)["input_ids"] for p in PROMPTS[:rows]]
    with engine._model_lock:  # the worker is not started: nobody else uses the runner
        engine._lora_batch.set_window(0, rows)
        runner.prefill(0, prompts)
        tokens = torch.tensor([p[-1] for p in prompts])
        lengths = [len(p) for p in prompts]
        plain, diffs = [], []
        for i in range(2 * pairs):
            record = i % 2 == 1
            t0 = CLOCK()
            runner.decode(tokens, lengths, record=record)
            if record:
                _ = [h.clone() for h in runner.hidden]  # what the engine keeps per row
            dt = CLOCK() - t0
            if record:
                diffs.append(dt - plain[-1])
            else:
                plain.append(dt)
        runner.cache.shrink()
    return statistics.median(plain), statistics.median(diffs)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2" if is_prepared() else "tiny")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    verifier = load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        scale = 0.03 if args.model == "smollm2" else 0.5
        weights = load_peft_weights(
            make_peft_adapter(verifier, Path(tmp) / "a", rank=8, alpha=16, scale=scale)
        )
    adapters = {"a": weights}
    engine = engine_with(load(args.model), adapters, max_batch=max(args.batch, 1))
    det = engine_with(load(args.model), adapters, max_batch=max(args.batch, 1), deterministic=True)
    run_batch(engine, batch(args.batch, 4, True), True)  # warm-up: allocations, slots, toploc import

    plain, proved, prove_only, proofs, toks = [], [], [], [], 0
    for _ in range(args.reps):  # interleaved, so a noisy neighbour hurts both modes alike
        s, _, toks, _ = run_batch(engine, batch(args.batch, args.tokens, False), False)
        plain.append(s)
        s, p, _, proofs = run_batch(engine, batch(args.batch, args.tokens, True), True)
        proved.append(s)
        prove_only.append(p)
    det_runs = [
        run_batch(det, batch(args.batch, args.tokens, False), False) for _ in range(max(1, args.reps - 1))
    ]
    det_s, det_toks = min(r[0] for r in det_runs), det_runs[0][2]

    step_s, step_extra_s = paired_step_overhead(engine, args.batch, 4 * args.reps)
    rec_s = record_ops_s(args.batch, int(verifier.model.config.hidden_size))

    # one job alone: generation, then its verification
    job = GenerationRequest(PROMPTS[0], "a", max_tokens=2 * args.tokens, record_hidden=True)
    gen_runs = []
    for _ in range(2):
        t0 = CLOCK()
        res = engine.generate_batch_sync([job])[0]
        gen_runs.append(CLOCK() - t0)
    gen_alone = min(gen_runs)
    proof = prove(res).to_bytes()
    reports = [
        verify_result(verifier, weights, res.hidden.prompt_ids, res.token_ids, proof, thresholds=t)
        for t in (Thresholds(), Thresholds.fp32())
    ]
    t0 = CLOCK()
    verify_result(
        verifier, weights, res.hidden.prompt_ids, res.token_ids, proof, thresholds=Thresholds.fp32()
    )
    verify_s = CLOCK() - t0

    sizes = [len(p.to_bytes()) for p in proofs]
    decode_tokens = [p.decode_steps for p in proofs]
    full_chunks = [len(c) for p in proofs for c in p.chunks[1:-1]] or [len(proofs[0].chunks[-1])]
    out = {
        "model": verifier.name,
        "clock": args.clock,
        "threads": args.threads,
        "batch": args.batch,
        "max_tokens": args.tokens,
        "proof_bytes_per_32_tokens": statistics.median(full_chunks),
        "proof_bytes_per_job": statistics.median(sizes),
        "proof_bytes_per_32_tokens_whole_proof": round(
            statistics.median(32 * s / max(1, d) for s, d in zip(sizes, decode_tokens, strict=True)), 1
        ),
        "proof_header_bytes": HEADER_BYTES,
        "generation_s_plain": round(min(plain), 3),
        "generation_s_recording_and_proving": round(min(proved), 3),
        "proof_overhead_pct": round(100 * (rec_s / step_s + statistics.median(prove_only) / min(plain)), 3),
        "recording_pct_per_decode_step": round(100 * rec_s / step_s, 3),
        "recording_pct_per_decode_step_paired": round(100 * step_extra_s / step_s, 3),
        "prove_call_pct_of_generation": round(100 * statistics.median(prove_only) / min(plain), 3),
        "end_to_end_overhead_pct": round(100 * (min(proved) - min(plain)) / min(plain), 2),
        "job_tokens": len(res.token_ids),
        "job_generation_s": round(gen_alone, 3),
        "job_verification_s": round(verify_s, 3),
        "verification_over_generation": round(verify_s / gen_alone, 4),
        "verify_passed": all(r.passed for r in reports),
        "tokens_per_s_default": round(toks / min(plain), 1),
        "tokens_per_s_deterministic": round(det_toks / det_s, 1),
        "deterministic_throughput_change_pct": round(100 * ((det_toks / det_s) / (toks / min(plain)) - 1), 1),
        "goals": {
            "proof_bytes_per_32_tokens": 300,
            "proof_overhead_pct": 2,
            "verification_over_generation": 0.1,
        },
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
