"""Forward passes over a left-padded batch whose rows join and leave between decode steps.

The KV cache is a transformers DynamicCache over the whole running batch, left padded: a row that
joins is prefilled on its own cache, then padded on the left to the batch's length and concatenated;
a row that finishes is dropped by index, and columns that became padding for every row are trimmed.
Positions come from each row's real length, so padding never shifts RoPE and masked columns never
reach the softmax: outputs equal an unpadded single-row run (checked against PEFT in the tests).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel


@dataclass
class KVBatch:
    cache: DynamicCache
    mask: torch.Tensor  # [rows, T] 1 = real token, 0 = left padding
    lengths: torch.Tensor  # [rows] real tokens per row (next position id)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    def merge(self, other: KVBatch) -> KVBatch:
        """This batch's rows followed by `other`'s, both left padded to the longer length."""
        t = max(self.mask.shape[1], other.mask.shape[1])
        kvs = [
            (torch.cat([_left_pad(k1, t), _left_pad(k2, t)]), torch.cat([_left_pad(v1, t), _left_pad(v2, t)]))
            for (k1, v1), (k2, v2) in zip(_kv(self.cache), _kv(other.cache), strict=True)
        ]
        _set_kv(self.cache, kvs)
        mask = torch.cat(
            [F.pad(self.mask, (t - self.mask.shape[1], 0)), F.pad(other.mask, (t - other.mask.shape[1], 0))]
        )
        return KVBatch(self.cache, mask, torch.cat([self.lengths, other.lengths]))

    def select(self, keep: list[int]) -> KVBatch | None:
        """Only rows `keep` (in that order); None when empty. Trims all-padding leading columns."""
        if not keep:
            return None
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        kvs = [
            (k.index_select(0, idx)[:, :, start:], v.index_select(0, idx)[:, :, start:])
            for k, v in _kv(self.cache)
        ]
        _set_kv(self.cache, kvs)
        return KVBatch(self.cache, mask[:, start:], self.lengths.index_select(0, idx))


class ModelRunner:
    """Prefill and decode steps of a causal LM; the only place that calls the model."""

    def __init__(self, model: PreTrainedModel, device: torch.device | str, pad_token_id: int) -> None:
        self.model = model
        self.device = torch.device(device)
        self.pad_token_id = pad_token_id
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], all_logits: bool = False) -> tuple[torch.Tensor, KVBatch]:
        """Logits [rows, vocab] at each prompt's last token (or [rows, T, vocab] with all_logits, left
        padded) and the rows' KV cache."""
        t = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), t), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), t), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, t - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[i, t - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=0 if all_logits else 1,
            **{self._cache_kw: cache},
        )
        logits = out.logits if all_logits else out.logits[:, -1]
        return logits, KVBatch(cache, mask, mask.sum(-1))

    @torch.inference_mode()
    def decode(self, batch: KVBatch, tokens: torch.Tensor) -> tuple[torch.Tensor, KVBatch]:
        """One token per row: logits [rows, vocab] and the grown batch."""
        mask = F.pad(batch.mask, (0, 1), value=1)
        out = self.model(
            input_ids=tokens.view(-1, 1).to(self.device),
            attention_mask=mask,
            position_ids=batch.lengths.view(-1, 1),
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kw: batch.cache},
        )
        return out.logits[:, -1], KVBatch(batch.cache, mask, batch.lengths + 1)


def _kv(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _set_kv(cache: DynamicCache, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (k, v) in zip(cache.layers, kvs, strict=True):
        layer.keys, layer.values = k, v


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """[rows, heads, T, dim] -> [rows, heads, length, dim], zeros on the left."""
    return F.pad(t, (0, 0, length - t.shape[2], 0))
