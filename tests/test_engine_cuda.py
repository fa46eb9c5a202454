"""The engine on a CUDA device (skipped without one; `scripts/gpu_check.sh` runs them on a lent GPU):
bf16 equal to PEFT in bf16 on mixed batches (default attention and the mask-free SDPA), swap-ins on the
side stream, the pool's reported bytes equal to what CUDA allocated for it, no uploads per decode step."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.models import LoadedModel, tiny_llama
from inference.prompt import encode_prompt
from tests.test_engine import load_weights
from tests.test_engine_gpu_path import PROMPTS, dirs, dirs_bf16, oracle_base  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _engine(adapters: dict[str, Path], **overrides: object) -> Engine:
    config = EngineConfig(**{"max_slots": 4, "max_rank": 16, "max_batch": 8, "device": "cuda", **overrides})  # type: ignore[arg-type]
    engine = Engine(tiny_llama(0), config)
    for key, d in adapters.items():
        engine.add_adapter(key, load_weights(d))
    return engine


def _peft_logits(
    base: LoadedModel, adapter: Path | None, ids: list[int], dtype: torch.dtype, fp32_adapter: bool = True
) -> torch.Tensor:
    model = copy.deepcopy(base.model).to(device="cuda", dtype=dtype)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter), autocast_adapter_dtype=fp32_adapter)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], device="cuda")).logits[0].float().cpu()


@pytest.mark.parametrize("attention", ["auto", "sdpa"])
def test_cuda_bf16_mixed_batch_equals_peft(
    oracle_base: LoadedModel,  # noqa: F811
    dirs_bf16: dict[str, Path],  # noqa: F811
    attention: str,
) -> None:
    engine = _engine(dirs_bf16, attention=attention)
    assert engine.dtype == torch.bfloat16  # "auto" on a bf16-capable GPU
    assert torch.backends.cuda.matmul.allow_tf32
    keys: list[str | None] = ["r2-qv", "r8-mlp", "r16-all", None, "r16-all"]
    prompts = [encode_prompt(oracle_base.tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(len(keys))]
    got = engine.prompt_logits(prompts, keys)
    for key, ids, logits in zip(keys, prompts, got, strict=True):
        adapter = dirs_bf16[key] if key else None
        ref16 = _peft_logits(oracle_base, adapter, ids, torch.bfloat16)
        ref16b = _peft_logits(oracle_base, adapter, ids, torch.bfloat16, fp32_adapter=False)
        ref32 = _peft_logits(oracle_base, adapter, ids, torch.float32)
        tolerance = 2 * max((r - ref32).abs().max().item() for r in (ref16, ref16b))
        assert (logits.float() - ref16).abs().max().item() <= tolerance, key
    # decode too: greedy generation of a mixed batch, rows joining and leaving
    requests = [GenerationRequest(PROMPTS[i % 4], k, max_tokens=4 + 3 * i) for i, k in enumerate(keys)]
    assert all(len(r.token_ids) > 0 for r in engine.generate_batch_sync(requests))


def test_cuda_swaps_run_on_the_side_stream(dirs: dict[str, Path]) -> None:  # noqa: F811
    engine = _engine(dirs, dtype="float32")
    assert engine._swapper.stream is not None
    assert engine._swapper.stream != torch.cuda.current_stream()
    ids = encode_prompt(engine.tokenizer, PROMPTS[0])
    reference = {k: engine.prompt_logits([ids], [k])[0] for k in dirs}  # first time: swapped in
    queued = engine._swapper.queued
    assert queued >= len(dirs)
    for k in dirs:  # evict and swap in again, several at once, then compare
        engine.slots.forget(k)
    again = engine.prompt_logits([ids] * len(dirs), list(dirs))
    assert engine._swapper.queued == queued + len(dirs)
    for k, logits in zip(dirs, again, strict=True):
        torch.testing.assert_close(logits, reference[k], atol=1e-4, rtol=0)


def test_cuda_pool_bytes_are_what_cuda_allocated(dirs: dict[str, Path]) -> None:  # noqa: F811
    base = tiny_llama(0)
    base.model.to("cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    engine = Engine(base, EngineConfig(max_slots=4, max_rank=16, max_batch=8, device="cuda", dtype="float32"))
    torch.cuda.synchronize()
    grown = torch.cuda.memory_allocated() - before
    runner_state = engine.runner.cache.nbytes + engine.runner.tokens.nbytes + engine.runner.lengths.nbytes
    assert abs(grown - engine.pool_bytes - runner_state) <= 64 * 1024, (
        grown,
        engine.pool_bytes,
        runner_state,
    )


def test_cuda_no_uploads_while_the_composition_holds(dirs: dict[str, Path]) -> None:  # noqa: F811
    engine = _engine(dirs)
    requests = [
        GenerationRequest(PROMPTS[i % 4], k, max_tokens=10, temperature=0.7 * (i % 2), seed=i)
        for i, k in enumerate([*dirs, None])
    ]
    engine.generate_batch_sync(requests)
    steps = engine.recent_steps()
    held = [s for prev, s in itertools.pairwise(steps) if s.request_ids == prev.request_ids]
    assert held and all(s.uploads == 0 for s in held)
