"""Choosing the next token per row: greedy for the whole batch in one argmax, seeded temperature /
top-p sampling per row (each request owns its generator, so its draws do not depend on its batch),
and stop conditions (EOS, stop strings)."""

from __future__ import annotations

import torch


class RowSampler:
    def __init__(self, temperature: float, top_p: float, seed: int | None) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator: torch.Generator | None = None
        if temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed if seed is not None else int(torch.seed()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sample(self, logits: torch.Tensor) -> int:
        """One token from logits [vocab] (float32 on CPU for reproducibility across devices)."""
        probs = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
            drop = sorted_p.cumsum(-1) - sorted_p >= self.top_p
            sorted_p[drop] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))


def next_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Next token per row of logits [rows, vocab]."""
    greedy = logits.argmax(dim=-1).tolist()
    return [greedy[i] if s.greedy else s.sample(logits[i]) for i, s in enumerate(samplers)]


def find_stop(text: str, stops: tuple[str, ...], search_from: int) -> int | None:
    """Index where the earliest stop string starts in `text`, looking only at matches that end after
    `search_from` (text already checked), or None."""
    best: int | None = None
    for s in stops:
        i = text.find(s, max(0, search_from - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best
