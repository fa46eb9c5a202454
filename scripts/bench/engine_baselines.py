"""The throughput section's two reference points, on the engine's own workload (same requests, prompts,
max tokens, greedy, same batch size):

  peft_preloaded_mixed  the strong baseline a user would pick instead of the engine: PEFT with every
                        adapter of the workload loaded once (`load_adapter`, not timed), requests batched
                        in arrival order into groups of --batch, each group one mixed-adapter
                        `generate(..., adapter_names=[...])` (left padded).
  ceiling               a perfect static batch of the bare base model (no adapters, every row the same
                        length: the workload's mean prompt length, exactly max_tokens generated per row)
                        through the engine's own ModelRunner, its time scaled by (base + LoRA FLOPs) /
                        base FLOPs of the workload (LoRA FLOPs analytic, from each adapter's rank and
                        targets), i.e. what the engine would reach if LoRA cost exactly its FLOPs and
                        batching were free.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from peft import PeftModel

from inference.engine import GenerationRequest, GenerationResult
from inference.engine.model_runner import ModelRunner
from inference.models import LoadedModel
from inference.prompt import encode_prompt

ModelFn = Callable[[], LoadedModel]


class CatalogLike(Protocol):
    shapes: dict[str, tuple[int, int]]

    def spec(self, i: int) -> tuple[int, tuple[str, ...]]: ...

    def write_peft_folder(self, i: int, root: Path) -> Path: ...


def peft_preloaded_mixed(
    model_fn: ModelFn,
    catalog: CatalogLike,
    root: Path,
    requests: Sequence[GenerationRequest],
    keys: Sequence[int],
    batch: int,
    engine_results: Sequence[GenerationResult],
) -> dict:
    base = model_fn()
    tok = base.tokenizer
    distinct = list(dict.fromkeys(keys))
    t0 = time.perf_counter()
    first = catalog.write_peft_folder(distinct[0], root)
    peft = PeftModel.from_pretrained(copy.deepcopy(base.model), str(first), adapter_name=f"a{distinct[0]}")
    for k in distinct[1:]:
        peft.load_adapter(str(catalog.write_peft_folder(k, root)), adapter_name=f"a{k}")
    peft.eval()
    load_s = time.perf_counter() - t0
    eos, pad = tok.eos_token_id, tok.pad_token_id
    outputs: list[list[int]] = []
    t0 = time.perf_counter()
    for first_row in range(0, len(requests), batch):
        group = requests[first_row : first_row + batch]
        prompts = [encode_prompt(tok, r.prompt) for r in group]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=peft.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=peft.device)
        with torch.no_grad():
            out = peft.generate(
                input_ids=ids,
                attention_mask=mask,
                adapter_names=[r.adapter for r in group],
                max_new_tokens=max(r.max_tokens for r in group),
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for row, req in zip(out[:, width:].tolist(), group, strict=True):
            row = row[: req.max_tokens]
            outputs.append(row[: row.index(eos)] if eos in row else row)
    peft_s = time.perf_counter() - t0
    tokens = sum(map(len, outputs))
    same = sum(o == r.token_ids for o, r in zip(outputs, engine_results, strict=True))
    return {
        "peft_preloaded_adapters": len(distinct),
        "peft_preloaded_load_s_not_timed": round(load_s, 2),
        "peft_preloaded_mixed_tokens_per_s": round(tokens / peft_s, 1),
        # greedy outputs equal to the engine's (left padding can flip a near-tie; a sanity check)
        "peft_preloaded_rows_equal_engine": f"{same}/{len(outputs)}",
    }


def workload_flops(
    model: torch.nn.Module,
    catalog: CatalogLike,
    keys: Sequence[int],
    prompt_lens: Sequence[int],
    gen_lens: Sequence[int],
) -> tuple[float, float]:
    """(base, LoRA) multiply-add FLOPs (2 per MAC) of serving the workload: every prompt token and every
    generated token but the last through all decoder projections, the lm_head for the generated ones,
    attention scores and values over each token's causal context, and each adapter's two rank-r
    products on the projections it targets."""
    cfg = model.config
    proj = 2.0 * sum(n_in * n_out for n_in, n_out in catalog.shapes.values())  # all layers
    head = 2.0 * model.lm_head.in_features * model.lm_head.out_features
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attn_width = cfg.num_attention_heads * head_dim
    attn = 4.0 * attn_width * cfg.num_hidden_layers  # per (token, context position)
    lora_per_token: dict[int, float] = {}
    base = lora = 0.0
    for k, p, g in zip(keys, prompt_lens, gen_lens, strict=True):
        if k not in lora_per_token:
            rank, targets = catalog.spec(k)
            lora_per_token[k] = sum(
                2.0 * rank * (n_in + n_out)
                for path, (n_in, n_out) in catalog.shapes.items()
                if path.rsplit(".", 1)[-1] in targets
            )
        fed = p + max(g - 1, 0)  # tokens through the decoder
        context = p * (p + 1) / 2 + sum(p + t + 1 for t in range(max(g - 1, 0)))
        base += fed * proj + g * head + context * attn
        lora += fed * lora_per_token[k]
    return base, lora


def static_ceiling(
    model_fn: ModelFn, n_requests: int, prompt_len: int, max_tokens: int, batch: int, repeats: int = 2
) -> dict:
    """Bare base model, every row `prompt_len` prompt tokens and exactly `max_tokens` generated, in
    groups of `batch`. Best of `repeats` (the most favourable ceiling)."""
    bare = model_fn()
    device = next(bare.model.parameters()).device
    runner = ModelRunner(bare.model, device, batch)
    ids = encode_prompt(bare.tokenizer, "Explain continuous batching to a new engineer, slowly and twice.")
    prompt = (ids * math.ceil(prompt_len / len(ids)))[:prompt_len]

    def run(n: int) -> float:
        t0 = time.perf_counter()
        for first in range(0, n, batch):
            rows = min(batch, n - first)
            logits = runner.prefill(0, [prompt] * rows)
            for step in range(max_tokens - 1):
                runner.tokens[:rows] = logits.argmax(-1)
                logits = runner.decode_rows(rows, prompt_len + step + 1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run(min(n_requests, batch))  # warm-up
    best = min(run(n_requests) for _ in range(repeats))
    return {"tokens": n_requests * max_tokens, "seconds": best}


def compare(
    model_fn: ModelFn,
    catalog: CatalogLike,
    root: Path,
    requests: Sequence[GenerationRequest],
    keys: Sequence[int],
    results: Sequence[GenerationResult],
    batch: int,
    engine_tps: float,
) -> dict:
    """Both reference points for one measured engine run (`engine_tps`: its generated tokens/s)."""
    out = peft_preloaded_mixed(model_fn, catalog, root, requests, keys, batch, results)
    peft_tps = out["peft_preloaded_mixed_tokens_per_s"]
    prompt_lens = [r.prompt_tokens for r in results]
    # an EOS the engine sampled was computed too (it is not in token_ids)
    gen_lens = [len(r.token_ids) + (r.finish_reason == "stop") for r in results]
    base_flops, lora_flops = workload_flops(model_fn().model, catalog, keys, prompt_lens, gen_lens)
    scale = (base_flops + lora_flops) / base_flops
    max_tokens = max(r.max_tokens for r in requests)
    mean_prompt = round(sum(prompt_lens) / len(prompt_lens))
    ceiling = static_ceiling(model_fn, len(requests), mean_prompt, max_tokens, batch)
    ceiling_base_tps = ceiling["tokens"] / ceiling["seconds"]
    ceiling_tps = ceiling_base_tps / scale
    out.update(
        vs_peft_preloaded_mixed=round(engine_tps / peft_tps, 2),
        goal_vs_peft_preloaded_mixed=3,
        ceiling_static_base_tokens_per_s=round(ceiling_base_tps, 1),
        lora_flop_share_of_base=round(lora_flops / base_flops, 4),
        ceiling_with_lora_flops_tokens_per_s=round(ceiling_tps, 1),
        vs_ceiling=round(engine_tps / ceiling_tps, 3),
        goal_vs_ceiling=0.9,
    )
    return out
