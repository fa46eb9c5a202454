"""The persistent-row model runner against the model's own (transformers) forward pass: rows of
different lengths, rows that grow past the cache's first allocation, and rows moved into holes; each
with both CPU-runnable decode attentions (the boolean-mask SDPA and the mask-free SDPA of CUDA)."""

from __future__ import annotations

import pytest
import torch

from inference.engine.model_runner import ModelRunner, UnsupportedModelError
from inference.models import tiny_llama

ATOL = 1e-4
MODES = pytest.mark.parametrize("attention", ["sdpa_mask", "sdpa"])


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _reference_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def _greedy_rows(runner: ModelRunner, prompts: list[list[int]], steps: int) -> list[list[int]]:
    logits = runner.prefill(0, prompts)
    seqs = [list(p) for p in prompts]
    for _ in range(steps):
        tokens = logits.argmax(-1)
        lengths = [len(s) for s in seqs]
        for s, t in zip(seqs, tokens.tolist(), strict=True):
            s.append(t)
        logits = runner.decode(tokens, lengths)
    return seqs


@MODES
def test_prefill_and_decode_equal_the_model_forward(attention: str) -> None:
    base = tiny_llama(0)
    runner = ModelRunner(base.model, "cpu", max_rows=4, attention=attention)
    prompts = [[5, 9, 20], [7] * 11, [1, 2, 3, 4, 5, 6]]  # right padding to 11 for two of them
    all_logits = runner.prefill(0, prompts, all_logits=True)
    for i, p in enumerate(prompts):
        torch.testing.assert_close(
            all_logits[i, : len(p)], _reference_logits(base.model, p), atol=ATOL, rtol=0
        )
    seqs = _greedy_rows(runner, prompts, steps=6)
    for seq, p in zip(seqs, prompts, strict=True):
        want = list(p)
        for _ in range(6):
            want.append(int(_reference_logits(base.model, want)[-1].argmax()))
        assert seq == want


@MODES
def test_rows_grow_past_the_first_allocation(attention: str) -> None:
    base = tiny_llama(0)
    runner = ModelRunner(base.model, "cpu", max_rows=2, attention=attention)
    first = runner.cache.positions
    long_prompt = [(i * 7) % 250 for i in range(first - 2)]
    seqs = _greedy_rows(runner, [long_prompt, [3, 4]], steps=5)  # crosses the first allocation
    assert runner.cache.positions > first
    logits = _reference_logits(base.model, seqs[0][:-1])
    assert int(logits[-1].argmax()) == seqs[0][-1]
    runner.cache.shrink()
    assert runner.cache.positions == first


@MODES
def test_a_moved_row_continues_as_before(attention: str) -> None:
    base = tiny_llama(0)
    runner = ModelRunner(base.model, "cpu", max_rows=3, attention=attention)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8, 7, 6, 5], [4, 4]]  # row 0 longer than the row moved in
    logits = runner.prefill(0, prompts)
    lengths = [len(p) for p in prompts]
    tokens = logits.argmax(-1)
    runner.move_row(2, 0, lengths[2])  # row 0 finished: the last row takes its place
    moved = [prompts[2] + [int(tokens[2])], prompts[1] + [int(tokens[1])]]
    out = runner.decode(torch.stack([tokens[2], tokens[1]]), [lengths[2], lengths[1]])
    for row, seq in enumerate(moved):
        torch.testing.assert_close(out[row], _reference_logits(base.model, seq)[-1], atol=ATOL, rtol=0)


def test_other_architectures_are_refused_with_a_reason() -> None:
    base = tiny_llama(0)
    base.model.config.model_type = "gpt2"
    with pytest.raises(UnsupportedModelError, match="Llama-architecture"):
        ModelRunner(base.model, "cpu", max_rows=1)


def test_engine_sets_cpu_threads_when_asked() -> None:
    from inference.engine import Engine, EngineConfig

    before = torch.get_num_threads()
    try:
        Engine(tiny_llama(0), EngineConfig(max_slots=1, max_rank=4, cpu_threads=1))
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="cpu_threads"):
            EngineConfig(cpu_threads=-2)
    finally:
        torch.set_num_threads(before)
