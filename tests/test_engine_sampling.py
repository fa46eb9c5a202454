"""Token choice and stop strings: batched sampling draws exactly what per-row sampling drew (same seed,
same tokens), and the incremental stop-string check cuts where a full re-decode would."""

from __future__ import annotations

import torch

from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.engine.sampling import RowSampler, next_tokens
from inference.models import tiny_llama


def _reference_sample(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """The per-row sampler as it was before batching (kept here as the oracle)."""
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


# (temperature, top_p, seed) per row; temperature 0 is greedy
ROWS = [(0.0, 1.0, None), (0.7, 1.0, 1), (1.3, 0.9, 2), (0.0, 1.0, None), (0.9, 0.5, 3), (1.0, 0.99, 4)]
# Tokens the per-row sampler (before batching) drew for ROWS over 6 steps of `_logits(step)`.
GOLDEN = [
    [35, 35, 107, 35, 33, 35],
    [95, 12, 148, 95, 168, 135],
    [104, 9, 9, 104, 104, 129],
    [180, 207, 11, 11, 11, 180],
    [112, 112, 112, 112, 112, 112],
    [212, 212, 253, 212, 52, 6],
]


def _logits(step: int, rows: int = len(ROWS), vocab: int = 259) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + step)
    base = torch.randn(vocab, generator=g) * 3
    return base + torch.randn(rows, vocab, generator=g)  # rows share a peak: greedy rows agree


def _samplers() -> list[RowSampler]:
    return [RowSampler(t, p, s) for t, p, s in ROWS]


def test_batched_sampling_draws_the_golden_tokens() -> None:
    samplers = _samplers()
    got = [next_tokens(_logits(step), samplers) for step in range(len(GOLDEN))]
    assert got == GOLDEN


def test_batched_sampling_equals_per_row_reference() -> None:
    samplers = _samplers()
    gens = {i: torch.Generator().manual_seed(s) for i, (_, _, s) in enumerate(ROWS) if s is not None}
    for step in range(8):
        logits = _logits(step)
        want = [
            int(logits[i].argmax()) if t == 0 else _reference_sample(logits[i], t, p, gens[i])
            for i, (t, p, _) in enumerate(ROWS)
        ]
        assert next_tokens(logits, samplers) == want


def test_sampled_row_does_not_depend_on_batch_mates() -> None:
    """The same request alone and among other rows (in another position) draws the same tokens."""
    alone = RowSampler(1.1, 0.8, 7)
    mixed = [RowSampler(0.0, 1.0, None), RowSampler(0.5, 1.0, 9), RowSampler(1.1, 0.8, 7)]
    for step in range(6):
        logits = _logits(step, rows=3)
        assert next_tokens(logits[2:3], [alone]) == next_tokens(logits, mixed)[2:]


def test_engine_seeded_generation_is_unchanged() -> None:
    """Seeded requests through the engine (sampled rows batched with a greedy one) give the tokens they
    gave before batched sampling."""
    torch.set_num_threads(1)
    engine = Engine(tiny_llama(0), EngineConfig(max_slots=2, max_rank=8, max_batch=4))
    requests = [
        GenerationRequest("hello there", None, max_tokens=12, temperature=0.8, top_p=0.9, seed=5),
        GenerationRequest("abc", None, max_tokens=12),
        GenerationRequest("what is a LoRA?", None, max_tokens=12, temperature=1.2, seed=6),
    ]
    got = [r.token_ids for r in engine.generate_batch_sync(requests)]
    assert got == ENGINE_GOLDEN


ENGINE_GOLDEN = [
    [244, 166, 247, 121, 198, 181, 12, 58, 216, 28, 247, 177],
    [138, 132, 188, 44, 228, 107, 7, 178, 104, 35, 246, 185],
    [91, 236, 102, 216, 61, 50, 30, 189, 20, 163, 236, 231],
]
