"""Choosing the next token per row, batched and on the model's device: one argmax for every greedy row;
the sampled rows' temperature, softmax and top-p cut in one op each over all of them, then one draw per
row from that request's own generator (so its draws do not depend on its batch and equal an unbatched
run). The per-row constants (temperatures, top-p, which rows sample) are uploaded once per batch
composition (`SamplingRows`), so a decode step uploads nothing. Stop strings are checked incrementally
(`StopChecker`): only the newly decoded text plus a window of the longest stop string minus one
character, never a re-decode of the whole output."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from inference.engine.transfers import Uploads

_TOP_P_CANDIDATES = 256  # top-p cut searched among this many largest probabilities first


class RowSampler:
    """One request's sampling settings; its generator lives on `device` (where its draws are made), so
    the same seed gives the same tokens on the same kind of device, whatever the batch."""

    def __init__(
        self, temperature: float, top_p: float, seed: int | None, device: torch.device | str = "cpu"
    ) -> None:
        self.temperature = temperature
        self.top_p = top_p
        self.generator: torch.Generator | None = None
        if temperature > 0:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed if seed is not None else int(torch.seed()))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sample(self, logits: torch.Tensor) -> int:
        """One token from logits [vocab]."""
        return sample_rows(logits.unsqueeze(0), [self])[0]


class SamplingRows:
    """Device-side constants for one list of samplers (one batch composition), built with one upload
    each; `for_samplers` reuses them while the samplers are the same objects in the same order."""

    def __init__(self, samplers: list[RowSampler], uploads: Uploads) -> None:
        self.ids = tuple(id(s) for s in samplers)
        self.samplers = list(samplers)  # keeps them alive: ids stay unique while cached
        sampled = [i for i, s in enumerate(samplers) if not s.greedy]
        self.all_greedy = not sampled
        self.all_sampled = len(sampled) == len(samplers)
        self.sampled = [samplers[i] for i in sampled]
        self.index = None if self.all_greedy or self.all_sampled else uploads.tensor(sampled, torch.long)
        self.temps = (
            None
            if self.all_greedy
            else uploads.tensor([[s.temperature] for s in self.sampled], torch.float32)
        )
        self.any_top_p = any(s.top_p < 1.0 for s in self.sampled)
        self.cut = self.top_p = None
        if self.any_top_p:
            self.cut = uploads.tensor([s.top_p < 1.0 for s in self.sampled], torch.bool)
            self.top_p = uploads.tensor([[s.top_p] for s in self.sampled], torch.float32)

    @staticmethod
    def for_samplers(cache: dict, samplers: list[RowSampler], uploads: Uploads) -> SamplingRows:
        key = tuple(id(s) for s in samplers)
        rows = cache.get(key)
        if rows is None:
            if len(cache) >= 4:
                cache.pop(next(iter(cache)))
            rows = cache[key] = SamplingRows(samplers, uploads)
        return rows


def next_tokens(
    logits: torch.Tensor, samplers: list[RowSampler], rows: SamplingRows | None = None
) -> list[int]:
    """Next token per row of logits [rows, vocab]."""
    return next_token_tensor(logits, samplers, rows).tolist()


def next_token_tensor(
    logits: torch.Tensor, samplers: list[RowSampler], rows: SamplingRows | None = None
) -> torch.Tensor:
    """Next token per row of logits [rows, vocab], as a tensor on the logits' device."""
    rows = rows or SamplingRows(samplers, Uploads(logits.device))
    if rows.all_greedy:
        return logits.argmax(dim=-1)
    if rows.all_sampled:
        return _sample(logits, rows)
    tokens = logits.argmax(dim=-1)
    assert rows.index is not None
    return tokens.index_copy_(0, rows.index, _sample(logits.index_select(0, rows.index), rows))


def sample_rows(logits: torch.Tensor, samplers: list[RowSampler]) -> list[int]:
    """One token per row of logits [rows, vocab], every sampler with temperature > 0."""
    return _sample(logits, SamplingRows(samplers, Uploads(logits.device))).tolist()


def _sample(logits: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """Computed in float32 on the logits' device; row i draws with rows.sampled[i]'s generator."""
    probs = torch.softmax(logits.float() / rows.temps, dim=-1)
    if rows.any_top_p:
        probs = _top_p(probs, rows)
    # One draw per row, each from that request's generator: torch.multinomial(p, 1) is argmax(p / q) with
    # q ~ Exp(1) drawn from the generator, so only the noise is drawn per row and the rest is batched.
    # Same draws as torch.multinomial (tests/test_engine_sampling.py pins them).
    noise = torch.empty_like(probs)
    for i, s in enumerate(rows.sampled):
        noise[i].exponential_(1, generator=s.generator)
    return probs.div_(noise).argmax(dim=-1)


def _top_p(probs: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """Zero all but the smallest prefix (in descending order) whose mass reaches top_p, always keeping
    the top token. The cut is looked for among the `_TOP_P_CANDIDATES` largest probabilities (one
    topk: a full sort of a 49k vocabulary costs ~2.6 ms a row on CPU); rows whose cut lies beyond them
    are sorted in full. Either way the kept entries, their order and cumulative sums are exactly those
    of a full sort."""
    n, vocab = probs.shape
    cut, top_p = rows.cut, rows.top_p
    assert cut is not None and top_p is not None
    k = min(vocab, _TOP_P_CANDIDATES)
    vals, order = probs.topk(k, dim=-1) if k < vocab else probs.sort(dim=-1, descending=True)
    drop = vals.cumsum(-1) - vals >= top_p
    inside = drop[:, -1] if k < vocab else torch.ones(n, dtype=torch.bool, device=probs.device)
    cut_probs = torch.zeros_like(probs).scatter_(1, order, vals.masked_fill_(drop, 0.0))
    out = torch.where((cut & inside).view(n, 1), cut_probs, probs)
    if k < vocab:
        for i in (cut & ~inside).nonzero().flatten().tolist():  # a device read only on this path
            sorted_p, full_order = probs[i].sort(descending=True)
            sorted_p[sorted_p.cumsum(-1) - sorted_p >= rows.sampled[i].top_p] = 0.0
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
