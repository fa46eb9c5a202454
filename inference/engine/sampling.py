"""Choosing the next token per row, batched: one argmax for every greedy row; the sampled rows'
temperature, softmax and top-p cut in one op each over all of them, then one draw per row from that
request's own generator (so its draws do not depend on its batch and equal an unbatched run). Stop
strings are checked incrementally (`StopChecker`): only the newly decoded text plus a window of the
longest stop string minus one character, never a re-decode of the whole output."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

_TOP_P_CANDIDATES = 256  # top-p cut searched among this many largest probabilities first


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
        """One token from logits [vocab]."""
        return sample_rows(logits.unsqueeze(0), [self])[0]


def next_tokens(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """Next token per row of logits [rows, vocab]."""
    sampled = [i for i, s in enumerate(samplers) if not s.greedy]
    if not sampled:
        return logits.argmax(dim=-1).tolist()
    if len(sampled) == len(samplers):
        return sample_rows(logits, samplers)
    tokens = logits.argmax(dim=-1).tolist()
    rows = logits.index_select(0, torch.tensor(sampled, device=logits.device))
    for i, tok in zip(sampled, sample_rows(rows, [samplers[i] for i in sampled]), strict=True):
        tokens[i] = tok
    return tokens


def sample_rows(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """One token per row of logits [rows, vocab], every sampler with temperature > 0. Computed in
    float32 on CPU, so draws are reproducible across devices; row i draws with samplers[i]'s generator."""
    temps = torch.tensor([[s.temperature] for s in samplers], dtype=torch.float32)
    probs = torch.softmax(logits.float().cpu() / temps, dim=-1)
    if any(s.top_p < 1.0 for s in samplers):
        probs = _top_p(probs, samplers)
    # One draw per row, each from that request's generator: torch.multinomial(p, 1) is argmax(p / q) with
    # q ~ Exp(1) drawn from the generator, so only the noise is drawn per row and the rest is batched.
    # Same draws as torch.multinomial (tests/test_engine_sampling.py pins them).
    noise = torch.empty_like(probs)
    for i, s in enumerate(samplers):
        noise[i].exponential_(1, generator=s.generator)
    return probs.div_(noise).argmax(dim=-1).tolist()


def _top_p(probs: torch.Tensor, samplers: list[RowSampler]) -> torch.Tensor:
    """Zero all but the smallest prefix (in descending order) whose mass reaches top_p, always keeping
    the top token. The cut is looked for among the `_TOP_P_CANDIDATES` largest probabilities (one
    topk: a full sort of a 49k vocabulary costs ~2.6 ms a row on CPU); rows whose cut lies beyond them
    are sorted in full. Either way the kept entries, their order and cumulative sums are exactly those
    of a full sort."""
    rows, vocab = probs.shape
    cut = torch.tensor([s.top_p < 1.0 for s in samplers])
    top_p = torch.tensor([[s.top_p] for s in samplers])
    k = min(vocab, _TOP_P_CANDIDATES)
    vals, order = probs.topk(k, dim=-1) if k < vocab else probs.sort(dim=-1, descending=True)
    drop = vals.cumsum(-1) - vals >= top_p
    inside = drop[:, -1] if k < vocab else torch.ones(rows, dtype=torch.bool)  # the cut is within k
    cut_probs = torch.zeros_like(probs).scatter_(1, order, vals.masked_fill_(drop, 0.0))
    out = torch.where((cut & inside).view(rows, 1), cut_probs, probs)
    for i in (cut & ~inside).nonzero().flatten().tolist():
        sorted_p, full_order = probs[i].sort(descending=True)
        sorted_p[sorted_p.cumsum(-1) - sorted_p >= samplers[i].top_p] = 0.0
        out[i] = torch.zeros_like(sorted_p).scatter_(0, full_order, sorted_p)
    return out


class StopChecker:
    """Incremental stop-string check for one request. Text is decoded incrementally (the offsets
    scheme of TGI / vLLM: decode the tokens since the last emitted boundary with and without the
    newest ones, emit the difference once it no longer ends in an incomplete character), and only
    the new text plus the last max(len(stop)) - 1 characters before it are searched."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stops = stops
        self.keep = max(0, max(len(s) for s in stops) - 1)
        self.tail = ""  # the last `keep` characters of the text emitted so far
        self._prefix = 0  # output[_prefix:_read] decodes to text already emitted
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def new_text(self, output: list[int]) -> str:
        """Text that `output`'s tokens since the last call add ("" while a character is incomplete)."""
        before = self._decode(output[self._prefix : self._read])
        now = self._decode(output[self._prefix :])
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(output)
        return now[len(before) :]

    def push(self, output: list[int]) -> bool:
        """`output` grew by one token: True when the text may now contain a stop string (the caller
        confirms on the full text once, and cuts there)."""
        window = self.tail + self.new_text(output)
        self.tail = window[-self.keep :] if self.keep else ""
        return any(s in window for s in self.stops)


def find_stop(text: str, stops: tuple[str, ...], search_from: int = 0) -> int | None:
    """Index where the earliest stop string starts in `text`, looking only at matches that end after
    `search_from` (text already checked), or None."""
    best: int | None = None
    for s in stops:
        i = text.find(s, max(0, search_from - len(s) + 1))
        if i >= 0 and (best is None or i < best):
            best = i
    return best
