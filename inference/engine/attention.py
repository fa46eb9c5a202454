"""Decode attention over the persistent rows' KV cache, in a form the fast kernels accept.

* `flash_attn`: FlashAttention-2's `flash_attn_with_kvcache` (CUDA, flash-attn installed): ragged row
  lengths natively (`cache_seqlens`), position-major cache, no mask, GQA native.
* `sdpa`: torch SDPA without any mask: the length mask rides in an extra key column (`kv_cache.py`),
  and GQA is folded into the query axis (the query heads that share a KV head become that head's
  queries), so neither `attn_mask` nor `enable_gqa` keeps the flash / efficient kernels out.
* `sdpa_mask`: one boolean mask `[rows, 1, 1, t]` per step, built on the device from the row lengths
  (the fastest on CPU; on CUDA it rules out the flash kernel).
Prefill is causal SDPA (no mask: right padding never reaches a real token), or `flash_attn_func`.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from inference.engine.kv_cache import PAD, RowKVCache


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def pick_attention(mode: str, device: torch.device, dtype: torch.dtype) -> str:
    """The decode attention for `mode` ("auto" resolved). Raises ValueError when "flash_attn" cannot run."""
    half = dtype in (torch.float16, torch.bfloat16)
    if mode == "auto":
        if device.type == "cuda":
            return "flash_attn" if flash_attn_available() and half else "sdpa"
        return "sdpa_mask"
    if mode == "flash_attn" and not (device.type == "cuda" and half and flash_attn_available()):
        raise ValueError(
            "EngineConfig.attention = 'flash_attn' needs a CUDA device, dtype bfloat16 or float16 and the "
            "flash-attn package (pip install flash-attn --no-build-isolation): install it or use 'auto'"
        )
    return mode


_QUERY_PAD: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _query_pad(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[1, 1, 1, PAD]: 1 against the keys' bias column, 0 against the padding (made once per device)."""
    key = (device, dtype)
    if key not in _QUERY_PAD:
        with torch.inference_mode(False):
            pad = torch.zeros(1, 1, 1, PAD, device=device, dtype=dtype)
            pad[..., 0] = 1.0
        _QUERY_PAD[key] = pad
    return _QUERY_PAD[key]


def _grouped_queries(q: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """[n, heads, 1, d] -> [n, kv_heads, heads // kv_heads, d]: query heads sharing a KV head become its
    queries (head h uses KV head h // group, as transformers' repeat_kv)."""
    n, heads, _, d = q.shape
    return q.view(n, kv_heads, heads // kv_heads, d)


def decode_sdpa(
    mode: str,
    q: torch.Tensor,
    cache: RowKVCache,
    layer: int,
    n: int,
    t: int,
    scale: float,
    mask: torch.Tensor | None,
    start: int = 0,
) -> torch.Tensor:
    """Attention of one new query per row [n, heads, 1, d] over columns [0, t) of rows [start, start + n);
    returns [n, heads, 1, d]. `mask` ([n, 1, 1, t] bool) only for "sdpa_mask"."""
    heads, d = q.shape[1], q.shape[3]
    rows = slice(start, start + n)
    keys, values = cache.keys(layer)[rows, :, :t], cache.values(layer)[rows, :, :t]
    kv_heads = keys.shape[1]
    qg = _grouped_queries(q, kv_heads)
    if mode == "sdpa":
        one = _query_pad(q.device, q.dtype)
        qg = torch.cat([qg, one.expand(n, kv_heads, heads // kv_heads, PAD)], dim=-1)
        out = F.scaled_dot_product_attention(qg, keys, values, scale=scale)[..., :d]
    else:
        out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(n, heads, 1, d)


def decode_flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache: RowKVCache,
    layer: int,
    n: int,
    seqlens: torch.Tensor,
    scale: float,
    start: int = 0,
) -> torch.Tensor:
    """FlashAttention decode: writes k / v ([n, kv_heads, 1, d]) at each row's `seqlens` (int32) into the
    position-major cache and attends over [0, seqlens + 1). Returns [n, heads, 1, d]."""
    from flash_attn import flash_attn_with_kvcache

    out = flash_attn_with_kvcache(
        q.transpose(1, 2),
        cache.k[layer, start : start + n],
        cache.v[layer, start : start + n],
        k=k.transpose(1, 2),
        v=v.transpose(1, 2),
        cache_seqlens=seqlens,
        softmax_scale=scale,
        causal=True,
    )
    return out.transpose(1, 2)


def prefill_attention(
    mode: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, gqa: bool
) -> torch.Tensor:
    """Causal attention of a right-padded prefill, [rows, heads, t, d] in and out."""
    if mode == "flash_attn":
        from flash_attn import flash_attn_func

        out = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=True
        )
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
