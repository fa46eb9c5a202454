"""The GPU path's properties, shown on CPU (the same code runs): bf16 equal to PEFT in bf16 in a mixed
batch, no host -> device uploads in a decode step while the batch composition holds, the pool's
reported bytes equal to what it allocates, memory proportional to rank under one byte budget, the
mask-free SDPA decode equal to PEFT, swaps that need no model lock, and the dtype setting."""

from __future__ import annotations

import copy
import itertools
import threading
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from inference.adapter import AdapterWeights, LoraPair
from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.engine.config import resolve_dtype
from inference.engine.scheduler import Job
from inference.models import LoadedModel, tiny_llama
from inference.prompt import encode_prompt
from inference.reference import peft_generate
from tests.factories import make_peft_adapter
from tests.test_engine import load_weights

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPECS = {
    "r2-qv": (2, 4, ("q_proj", "v_proj")),
    "r8-mlp": (8, 8, ("gate_proj", "up_proj", "down_proj")),
    "r16-all": (16, 32, ALL),
}
PROMPTS = ["hello there", "what is a LoRA?", "abc", "the quick brown fox jumps"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def oracle_base() -> LoadedModel:
    return tiny_llama(0)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory, oracle_base: LoadedModel) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gpu-path-adapters")
    return {
        key: make_peft_adapter(oracle_base, root / key, rank=r, alpha=a, targets=t, seed=i + 1)
        for i, (key, (r, a, t)) in enumerate(SPECS.items())
    }


def _engine(dirs: dict[str, Path], **overrides: object) -> Engine:
    config = EngineConfig(**{"max_slots": 4, "max_rank": 16, "max_batch": 8, **overrides})  # type: ignore[arg-type]
    engine = Engine(tiny_llama(0), config)
    for key, d in dirs.items():
        engine.add_adapter(key, load_weights(d))
    return engine


def _peft_logits(
    base: LoadedModel, adapter: Path | None, ids: list[int], dtype: torch.dtype, fp32_adapter: bool = True
) -> torch.Tensor:
    model = copy.deepcopy(base.model).to(dtype)
    if adapter is not None:  # by default PEFT keeps (autocasts) the adapter and its product in float32
        model = PeftModel.from_pretrained(
            model, str(adapter), use_safetensors=True, autocast_adapter_dtype=fp32_adapter
        )
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


@pytest.fixture(scope="module")
def dirs_bf16(tmp_path_factory: pytest.TempPathFactory, oracle_base: LoadedModel) -> dict[str, Path]:
    """Adapters whose product is a perturbation of the base model's, as trained ones are (the factory's
    default scale makes the LoRA product dwarf the base model: then bf16 storage of A and B alone, which
    PEFT avoids by keeping float32 copies, moves logits by ~20 % of their range)."""
    root = tmp_path_factory.mktemp("bf16-adapters")
    return {
        key: make_peft_adapter(oracle_base, root / key, rank=r, alpha=a, targets=t, seed=i + 1, scale=0.2)
        for i, (key, (r, a, t)) in enumerate(SPECS.items())
    }


def test_bf16_mixed_batch_equals_peft_within_bf16_tolerance(
    oracle_base: LoadedModel, dirs_bf16: dict[str, Path]
) -> None:
    """One mixed batch (three adapters of ranks 2 / 8 / 16, a bare row) in bfloat16: every row's logits
    are within twice PEFT's own bf16 error of PEFT's bf16 logits (PEFT's error vs fp32, with its adapter
    in fp32, its default, or in bf16, as the engine keeps adapters), the adapters move the logits by far
    more than that, and the greedy token agrees at >= 95 % of positions."""
    engine = _engine(dirs_bf16, dtype="bfloat16")
    assert engine.dtype == torch.bfloat16
    assert all(m.lora_a.dtype == torch.bfloat16 for m in engine.layers.values())
    keys: list[str | None] = ["r2-qv", "r8-mlp", "r16-all", None, "r16-all"]
    prompts = [encode_prompt(oracle_base.tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(len(keys))]
    got = engine.prompt_logits(prompts, keys)
    agree = total = 0
    for key, ids, logits in zip(keys, prompts, got, strict=True):
        adapter = dirs_bf16[key] if key else None
        ref16 = _peft_logits(oracle_base, adapter, ids, torch.bfloat16)
        ref32 = _peft_logits(oracle_base, adapter, ids, torch.float32)
        ref16_bf16_adapter = _peft_logits(oracle_base, adapter, ids, torch.bfloat16, fp32_adapter=False)
        tolerance = 2 * max((r - ref32).abs().max().item() for r in (ref16, ref16_bf16_adapter))
        err = (logits.float() - ref16).abs().max().item()
        assert err <= tolerance, (key, err, tolerance)
        if key is not None:
            bare = _peft_logits(oracle_base, None, ids, torch.float32)
            assert (ref32 - bare).abs().max().item() > 4 * tolerance, key  # the adapter matters
        agree += int((logits.float().argmax(-1) == ref16.argmax(-1)).sum())
        total += len(ids)
    assert agree >= 0.95 * total


def test_no_uploads_in_a_decode_step_while_the_composition_holds(dirs: dict[str, Path]) -> None:
    """Greedy and seeded-sampled rows of three adapters and the bare model, finishing one after another:
    the engine's own upload count is > 0 for the prefill and for the first step after each row leaves
    (new LoRA plan, new sampling constants), and 0 for every other decode step (positions, next tokens,
    plan and constants stay on the device)."""
    engine = _engine(dirs)
    settings = [("r2-qv", 0.0, 1.0), ("r8-mlp", 0.8, 0.9), ("r16-all", 0.0, 1.0), (None, 1.2, 1.0)]
    requests = [
        GenerationRequest(PROMPTS[i], k, max_tokens=12 + 2 * i, temperature=t, top_p=p, seed=i)
        for i, (k, t, p) in enumerate(settings)
    ]
    engine.generate_batch_sync(requests)
    steps = engine.recent_steps()
    assert steps[0].kind == "prefill" and steps[0].uploads > 0
    assert all(s.kind == "decode" for s in steps[1:])
    pairs = list(itertools.pairwise(steps))
    changed = [s for prev, s in pairs if s.request_ids != prev.request_ids]
    held = [s for prev, s in pairs if s.request_ids == prev.request_ids]
    assert len(changed) >= 2 and all(s.uploads > 0 for s in changed)
    assert len(held) >= 12 and [s.uploads for s in held] == [0] * len(held)


def _tensor_bytes(obj: object, seen: set[int]) -> int:
    if isinstance(obj, torch.Tensor):
        ptr = obj.untyped_storage().data_ptr()
        if ptr in seen:
            return 0
        seen.add(ptr)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v, seen) for v in obj)
    return 0


def test_reported_pool_bytes_are_what_the_pool_allocates(dirs: dict[str, Path]) -> None:
    engine = _engine(dirs)
    engine.generate_batch_sync([GenerationRequest(PROMPTS[i], k, max_tokens=3) for i, k in enumerate(dirs)])
    seen: set[int] = set()
    allocated = sum(
        _tensor_bytes({k: v for k, v in vars(m).items() if k != "_modules"}, seen)
        for m in engine.layers.values()
    )
    stats = engine.stats()
    assert allocated == stats.pool_bytes + stats.extra["lora_workspace_bytes"]
    element = 4  # float32
    rows = sum(m.in_features + m.out_features for m in engine.layers.values())
    assert stats.pool_bytes == engine.slots.num_pages * rows * element == 4 * 16 * rows * element


def _rank_adapter(engine: Engine, rank: int, seed: int) -> AdapterWeights:
    gen = torch.Generator().manual_seed(seed)
    layers = {
        path: LoraPair(
            a=torch.randn(rank, n_in, generator=gen) * 0.1, b=torch.randn(n_out, rank, generator=gen) * 0.1
        )
        for path, (n_in, n_out) in engine._shapes.items()
    }
    return AdapterWeights(rank=rank, alpha=float(rank), use_rslora=False, target_modules=ALL, layers=layers)


def test_memory_is_proportional_to_rank_under_one_budget() -> None:
    """64 rank-8 adapters (every projection) resident at once take <= 1.25 x their own bytes, and a
    rank-64 adapter still fits beside them: nothing evicted. (A pool padded to r_max = 64 would need 8x.)"""
    probe = Engine(tiny_llama(0), EngineConfig(max_slots=1, max_rank=64))
    row = probe.pool_bytes // probe.slots.num_pages
    own = 64 * 8 * row  # 64 adapters of rank 8, one rank row of every wrapped layer per rank
    engine = Engine(tiny_llama(0), EngineConfig(max_rank=64, max_batch=8, pool_budget_bytes=int(1.25 * own)))
    adapters = {f"r8-{i}": _rank_adapter(engine, 8, i) for i in range(64)} | {
        "r64": _rank_adapter(engine, 64, 99)
    }
    for key, w in adapters.items():
        engine.add_adapter(key, w)
    assert sum(engine.host.get(k).nbytes for k in adapters if k != "r64") == own  # type: ignore[union-attr]
    keys = list(adapters)
    for first in range(0, len(keys), 8):
        engine.prompt_logits([[5, 6, 7]] * len(keys[first : first + 8]), keys[first : first + 8])
    stats = engine.stats()
    assert stats.evictions == 0 and stats.extra["adapters_resident"] == 65
    assert stats.pool_bytes <= 1.25 * own
    assert {s.adapter for s in stats.slots if s.adapter} == set(keys)


def test_mask_free_sdpa_decode_equals_peft(oracle_base: LoadedModel, dirs: dict[str, Path]) -> None:
    """attention="sdpa" (the CUDA default without flash-attn: no attn_mask, no enable_gqa) in a mixed
    batch of rows of different lengths that join and leave: greedy output equal to PEFT's."""
    engine = _engine(dirs, attention="sdpa")
    assert engine.runner.attention == "sdpa"
    requests = [
        GenerationRequest(PROMPTS[i % 4], k, max_tokens=6 + 5 * i)
        for i, k in enumerate([*dirs, None, "r2-qv"])
    ]
    for req, res in zip(requests, engine.generate_batch_sync(requests), strict=True):
        ref = peft_generate(
            oracle_base, dirs[req.adapter] if req.adapter else None, req.prompt, req.max_tokens
        )
        assert res.token_ids == ref.token_ids, req.adapter


def test_swap_in_needs_no_model_lock(dirs: dict[str, Path]) -> None:
    """While another thread holds the model lock (a forward pass), admission still copies an adapter in."""
    engine = _engine(dirs)
    engine._submit(
        engine._make_job(
            GenerationRequest("x", "r16-all", max_tokens=1),
            "r16-all",
            engine.host.get("r16-all"),
            lambda _: None,
        )
    )
    admitted: list[list[Job]] = []
    with engine._model_lock:
        worker = threading.Thread(target=lambda: admitted.append(engine._admit()))
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "admission waited for the model lock"
    (job,) = admitted[0]
    assert engine.swaps_in == 1 and not job.copy_pending and engine.slots.lookup("r16-all") == job.slot


def test_dtype_setting() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, torch.float64) == torch.float32
    assert resolve_dtype(None, cpu, torch.float64) == torch.float64
    assert resolve_dtype("float16", cpu, torch.float32) == torch.float16
    assert resolve_dtype(torch.bfloat16, cpu, torch.float32) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(dtype="fp8")
    with pytest.raises(ValueError, match="flash-attn"):
        Engine(tiny_llama(0), EngineConfig(max_slots=1, max_rank=4, attention="flash_attn"))
    with pytest.raises(ValueError, match="pool_budget_bytes"):
        Engine(tiny_llama(0), EngineConfig(max_rank=64, pool_budget_bytes=1000))


def test_a_failed_swap_in_leaves_nothing_resident(dirs: dict[str, Path]) -> None:
    """A copy that fails after pages were reserved fails its requests and does not leave the adapter
    marked resident over unfilled pages: the next request copies it in and equals PEFT's output."""
    engine = _engine(dirs)
    layer = next(iter(engine.layers.values()))
    real = layer.write_pages

    def broken(*args: object) -> None:
        raise RuntimeError("copy failed")

    layer.write_pages = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="copy failed"):
        engine.generate_batch_sync([GenerationRequest(PROMPTS[0], "r16-all", max_tokens=4)])
    assert engine.slots.lookup("r16-all") is None and engine.slots.free_pages == engine.slots.num_pages
    layer.write_pages = real  # type: ignore[method-assign]
    [again] = engine.generate_batch_sync([GenerationRequest(PROMPTS[0], "r16-all", max_tokens=4)])
    [alone] = _engine(dirs).generate_batch_sync([GenerationRequest(PROMPTS[0], "r16-all", max_tokens=4)])
    assert again.token_ids == alone.token_ids
