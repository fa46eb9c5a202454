"""The `sampling` section: the per-token work outside the forward pass. The same closed-loop workload
twice through one engine: every row sampled (temperature 0.8, top-p 0.9, its own seed) with two stop
strings that never match (so every token is checked and every request runs to max_tokens), then all
greedy without stop strings. The gap is what sampling and stop checking cost per generated token."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from inference.engine import Engine, GenerationRequest

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
