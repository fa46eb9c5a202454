"""Token choice and stop strings: batched sampling draws exactly what per-row sampling drew (same seed,
same tokens), and the incremental stop-string check cuts where a full re-decode would."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.engine.sampling import RowSampler, StopChecker, find_stop, next_tokens
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


# ------------------------------------------------------------------------------------ stop strings


def _byte_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _first_stop_token(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: tuple[str, ...]
) -> int | None:
    """Index of the first token after which the checker reports a stop (None: never)."""
    checker = StopChecker(tokenizer, stops)
    for n in range(1, len(ids) + 1):
        if checker.push(ids[:n]):
            return n - 1
    return None


def _full_redecode_stop(
    tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: tuple[str, ...]
) -> int | None:
    """The old check: re-decode the whole output after every token."""
    for n in range(1, len(ids) + 1):
        if find_stop(tokenizer.decode(ids[:n], skip_special_tokens=True), stops) is not None:
            return n - 1
    return None


def test_incremental_stop_split_across_tokens_at_start_and_two_stops() -> None:
    tok = tiny_llama(0).tokenizer  # byte-level: every character of these strings is its own token
    ids = _byte_ids(tok, "hello wor" + "ld and more")
    # "world" spans five tokens, the last of which arrives at index 10
    assert _first_stop_token(tok, ids, ("world",)) == 10
    assert _first_stop_token(tok, ids, ("hel",)) == 2  # at the very start of the output
    assert _first_stop_token(tok, ids, ("h",)) == 0  # one-character stop on the first token
    assert _first_stop_token(tok, ids, ("and", "o w")) == 6  # two stops: the earlier one wins
    assert _first_stop_token(tok, ids, ("more", "zzz")) == len(ids) - 1
    assert _first_stop_token(tok, ids, ("xyz", "hello!")) is None


def test_incremental_stop_matches_full_redecode_on_multibyte_and_invalid_bytes() -> None:
    """Random byte tokens (incomplete and invalid UTF-8 included) and multi-byte characters: the
    incremental check stops at the same token as re-decoding everything, and its text is the full one."""
    tok = tiny_llama(0).tokenizer
    g = torch.Generator().manual_seed(0)
    text = "añb€c日本語 ok 🙂 done"
    for trial in range(40):
        ids = _byte_ids(tok, text)
        if trial:  # splice random bytes (tokens 3..258 are the 256 bytes) into the valid text
            noise = torch.randint(0, len(ids), (4,), generator=g).tolist()
            for at in sorted(noise, reverse=True):
                ids.insert(at, int(torch.randint(3, 259, (1,), generator=g)))
        full = tok.decode(ids, skip_special_tokens=True)
        checker = StopChecker(tok, ("\x00\x00",))
        emitted = "".join(checker.new_text(ids[:n]) for n in range(1, len(ids) + 1))
        assert full.startswith(emitted) and full[len(emitted) :].count("\ufffd") <= 1
        for stops in (("本語",), ("🙂",), ("c日", "ok"), ("b€c",)):
            assert _first_stop_token(tok, ids, stops) == _full_redecode_stop(tok, ids, stops)


def test_engine_stop_strings_cut_like_before() -> None:
    """Through the engine: two stop strings, the earlier match cuts; a stop at the very start gives ""."""
    torch.set_num_threads(1)
    engine = Engine(tiny_llama(0), EngineConfig(max_slots=2, max_rank=8, max_batch=4))
    greedy = engine.generate_batch_sync([GenerationRequest("hello there", None, max_tokens=30)])[0]
    text = greedy.text
    assert len(text) > 12
    late, early = text[9:12], text[4:6]
    both, start = engine.generate_batch_sync(
        [
            GenerationRequest("hello there", None, max_tokens=30, stop=(late, early)),
            GenerationRequest("hello there", None, max_tokens=30, stop=(text[:2],)),
        ]
    )
    assert both.finish_reason == "stop" and both.text == text[: min(text.find(late), text.find(early))]
    assert start.finish_reason == "stop" and start.text == ""
    assert greedy.token_ids[: len(both.token_ids)] == both.token_ids


def test_top_p_cut_beyond_the_candidates_equals_per_row_reference() -> None:
    """Large vocabulary: a peaked row (cut among the first candidates), a flat row whose top-p mass
    needs thousands of tokens (the full-sort fallback), and a row without a cut, batched together."""
    vocab = 8000
    rows = [(0.7, 0.9, 1), (5.0, 0.99, 2), (1.0, 1.0, 3), (0.3, 0.5, 4)]
    samplers = [RowSampler(t, p, s) for t, p, s in rows]
    gens = [torch.Generator().manual_seed(s) for _, _, s in rows]
    for step in range(5):
        g = torch.Generator().manual_seed(50 + step)
        logits = torch.randn(len(rows), vocab, generator=g) * 3
        want = [_reference_sample(logits[i], t, p, gens[i]) for i, (t, p, _) in enumerate(rows)]
        assert next_tokens(logits, samplers) == want
