"""The `sampling` section: the per-token work outside the forward pass. The same closed-loop workload
twice through one engine: every row sampled (temperature 0.8, top-p 0.9, its own seed) with two stop
strings that never match (so every token is checked and every request runs to max_tokens), then all
greedy without stop strings. The gap is what sampling and stop checking cost per generated token.
`micro_per_step` times that work alone for one decode step of --batch rows, before (per-row sampler,
full re-decode per token; the previous code, kept here) and now (batched sampler, incremental check)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from transformers import PreTrainedTokenizerBase

from inference.engine import Engine, GenerationRequest
from inference.engine.sampling import RowSampler, StopChecker, find_stop, next_tokens

PROMPT = "Write a long story about a robot that learns to paint, with many details."
NEVER = ("<|no such stop|>", "\x00\x01never")


def bench_sampling(make_engine: Callable[[], Engine], args: argparse.Namespace) -> dict:
    n, tokens = args.sampling_requests, args.sampling_tokens
    engine = make_engine()
    adapters = [None] + [f"a{i}" for i in range(7)]  # fits the slot pool: no swaps in the timed part

    def requests(sampled: bool) -> list[GenerationRequest]:
        return [
            GenerationRequest(
                PROMPT,
                adapters[i % len(adapters)],
                max_tokens=tokens,
                temperature=0.8 if sampled else 0.0,
                top_p=0.9 if sampled else 1.0,
                seed=i if sampled else None,
                stop=NEVER if sampled else (),
            )
            for i in range(n)
        ]

    engine.generate_batch_sync(requests(True)[: len(adapters)])  # warm-up: adapters into slots
    out: dict = {"requests": n, "max_tokens": tokens}
    for name, sampled in (("greedy_no_stop", False), ("sampled_top_p_two_stops", True)):
        t0 = time.perf_counter()
        results = engine.generate_batch_sync(requests(sampled))
        seconds = time.perf_counter() - t0
        out[f"{name}_tokens_per_s"] = round(sum(len(r.token_ids) for r in results) / seconds, 1)
    greedy, sampled_tps = out["greedy_no_stop_tokens_per_s"], out["sampled_top_p_two_stops_tokens_per_s"]
    out["sampled_over_greedy"] = round(sampled_tps / greedy, 3)
    return out


# --------------------------------------------------------------------- micro: the step's own CPU work


def _per_row_sample(logits: torch.Tensor, sampler: RowSampler) -> int:
    """The sampler before batching (one softmax / sort / cumsum / draw per row), for comparison."""
    probs = torch.softmax(logits.float().cpu() / sampler.temperature, dim=-1)
    if sampler.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p >= sampler.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=sampler.generator))


def _best_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(1e3 * min(times), 3)


def bench_hot_path_micro(tokenizer: PreTrainedTokenizerBase, vocab: int, rows: int, out_len: int) -> dict:
    """Per decode step, outside the forward pass, for `rows` rows: choosing the tokens (greedy; all
    sampled with top-p: per row as before vs batched) and the stop-string check of every row at output
    length `out_len` (full re-decode + search as before vs the incremental check)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, vocab, generator=g) * 4
    greedy = [RowSampler(0.0, 1.0, None) for _ in range(rows)]
    sampled = [RowSampler(0.8, 0.9, i) for i in range(rows)]
    ids = torch.randint(0, min(vocab, len(tokenizer)), (rows, out_len + 1), generator=g).tolist()
    checkers = []
    for row in ids:  # bring each checker to out_len tokens, so the timed call is one step's check
        checker = StopChecker(tokenizer, NEVER)
        for n in range(1, out_len + 1):
            checker.push(row[:n])
        checkers.append(checker)

    def full_redecode() -> None:
        for row in ids:
            find_stop(tokenizer.decode(row, skip_special_tokens=True), NEVER, out_len)

    def incremental() -> None:  # each checker sees its row grow by the same one token every repeat
        for checker, row in zip(checkers, ids, strict=True):
            checker._prefix = checker._read = min(checker._read, out_len)
            checker.push(row)

    repeats = 20
    return {
        "rows": rows,
        "vocab": vocab,
        "greedy_next_tokens_ms": _best_ms(lambda: next_tokens(logits, greedy), repeats),
        "sampled_per_row_before_ms": _best_ms(
            lambda: [_per_row_sample(logits[i], s) for i, s in enumerate(sampled)], repeats
        ),
        "sampled_batched_ms": _best_ms(lambda: next_tokens(logits, sampled), repeats),
        "stop_check_output_tokens": out_len,
        "stop_check_full_redecode_before_ms": _best_ms(full_redecode, repeats),
        "stop_check_incremental_ms": _best_ms(incremental, repeats),
    }
