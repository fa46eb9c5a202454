"""Benchmark of the multi-LoRA swap engine. Prints one JSON object; every ratio is against a baseline
measured in the same run, on the same model and workload.

    .venv/bin/python scripts/bench/engine.py --quick          # < 2 minutes
    .venv/bin/python scripts/bench/engine.py                  # full run
    .venv/bin/python scripts/bench/engine.py --model smollm2-135m-instruct
    python scripts/bench/engine.py --device cuda --model llama-1b --quick   # scripts/gpu_check.sh runs this

Sections:
  throughput   Zipf(1.1) requests over the catalog's first --adapters adapters; engine (continuous
               batching, --slots slots, loader -> host tier -> slot) vs naive PEFT serving (load_adapter +
               set_adapter + generate + delete_adapter per request, one request at a time); vs PEFT with
               every adapter preloaded and mixed-adapter batches (`vs_peft_preloaded_mixed`); and as a
               fraction of a static bare-model batch plus the LoRA FLOPs (`vs_ceiling`). Both are
               described in engine_baselines.py.
  mixed_batch  a batch of --batch rows with --batch different adapters vs the bare (unwrapped) base model
               at the same batch size, same prefill + decode loop (ModelRunner).
  sampling     per-token work outside the forward pass: all rows sampled (top-p, seeded) with stop
               strings vs all greedy, same engine and workload (engine_hot_path.py).
  swap         host tier -> slot copy vs PEFT load_adapter of the same adapter; swap time as the host tier
               holds 10, 100, 1000 adapters.
  memory       RSS after 100 and after 10,000 swap-ins across 1,000 adapters (host tier filled first).
  latency      open-loop Poisson arrivals at ~60% of measured engine capacity: p50/p99 per request.
Adapters are synthesized (seeded random A/B, ranks 2/4/8/16, three target sets); the PEFT baseline reads
the same tensors from real PEFT folders on disk.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import engine_baselines  # this folder, on sys.path above
import engine_hot_path

from inference.adapter import AdapterWeights, LoraPair
from inference.engine import Engine, EngineConfig, GenerationRequest
from inference.engine.config import resolve_dtype
from inference.engine.lora_layer import LoraBatch, wrap_model
from inference.engine.model_runner import ModelRunner
from inference.engine.prepared import prepare_adapter
from inference.models import LoadedModel, load_base_model, tiny_llama
from inference.prompt import encode_prompt

ModelFn = Callable[[], LoadedModel]
RANKS = (2, 4, 8, 16)
TARGET_SETS = (
    ("q_proj", "v_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
)
PROMPTS = [
    "Summarize the plot of a heist movie in two sentences.",
    "What is a LoRA adapter?",
    "Write a haiku about GPUs.",
    "Translate 'good morning' into French and Spanish.",
    "List three prime numbers greater than one hundred.",
    "Explain continuous batching to a new engineer.",
]


@dataclass(frozen=True)
class Catalog:
    """Adapter i is a pure function of i: rank, targets and seeded random tensors."""

    base: LoadedModel
    shapes: dict[str, tuple[int, int]]  # module path -> (in, out)

    def spec(self, i: int) -> tuple[int, tuple[str, ...]]:
        return RANKS[i % len(RANKS)], TARGET_SETS[(i // len(RANKS)) % len(TARGET_SETS)]

    def weights(self, i: int) -> AdapterWeights:
        rank, targets = self.spec(i)
        gen = torch.Generator().manual_seed(10_000 + i)
        layers = {}
        for path, (n_in, n_out) in self.shapes.items():
            if path.rsplit(".", 1)[-1] in targets:
                a = torch.randn(rank, n_in, generator=gen) / n_in**0.5
                b = torch.randn(n_out, rank, generator=gen) * 0.1
                layers[path] = LoraPair(a=a, b=b)
        return AdapterWeights(
            rank=rank, alpha=2.0 * rank, use_rslora=False, target_modules=targets, layers=layers
        )

    def write_peft_folder(self, i: int, root: Path) -> Path:
        w = self.weights(i)
        folder = root / f"a{i}"
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for path, pair in w.layers.items():
            tensors[f"base_model.model.{path}.lora_A.weight"] = pair.a.contiguous()
            tensors[f"base_model.model.{path}.lora_B.weight"] = pair.b.contiguous()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "r": w.rank,
            "lora_alpha": w.alpha,
            "target_modules": list(w.target_modules),
            "lora_dropout": 0.0,
            "bias": "none",
            "task_type": None,
            "inference_mode": True,
        }
        (folder / "adapter_config.json").write_text(json.dumps(config))
        return folder


def linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    names = set(TARGET_SETS[-1])
    return {
        n: (m.in_features, m.out_features)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in names
    }


def zipf_keys(n: int, catalog_size: int, rng: random.Random, s: float = 1.1) -> list[int]:
    weights = [1 / (k + 1) ** s for k in range(catalog_size)]
    return rng.choices(range(catalog_size), weights=weights, k=n)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def make_engine(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace, **overrides: object) -> Engine:
    async def loader(key: str) -> AdapterWeights:
        return catalog.weights(int(key[1:]))

    cfg = EngineConfig(
        max_slots=args.slots,
        max_rank=16,
        max_batch=args.batch,
        max_queue=100_000,
        host_budget_bytes=args.host_mb << 20,
        device=args.device,
        dtype=args.torch_dtype,
    )
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return Engine(model_fn(), cfg, loader=loader)


# ------------------------------------------------------------------------------------------- sections


def bench_throughput(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace, root: Path) -> dict:
    rng = random.Random(1)
    keys = zipf_keys(args.requests, args.adapters, rng)
    requests = [
        GenerationRequest(PROMPTS[i % len(PROMPTS)], f"a{k}", max_tokens=args.max_tokens)
        for i, k in enumerate(keys)
    ]
    engine = make_engine(model_fn, catalog, args)
    engine.generate_batch_sync([GenerationRequest(PROMPTS[0], None, max_tokens=2)])  # warm-up, not timed
    t0 = time.perf_counter()
    results = engine.generate_batch_sync(requests)
    engine_s = time.perf_counter() - t0
    engine_tokens = sum(len(r.token_ids) for r in results)
    stats = engine.stats()

    # Naive PEFT: one request at a time, adapter loaded from disk for each request.
    n_peft = min(args.peft_requests, len(requests))
    base = model_fn()
    folders = {k: catalog.write_peft_folder(k, root) for k in set(keys[:n_peft])}
    peft = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folders[keys[0]]), adapter_name="warm")
    peft.eval()
    peft_tokens, t0 = 0, time.perf_counter()
    for req, k in zip(requests[:n_peft], keys[:n_peft], strict=True):
        peft.load_adapter(str(folders[k]), adapter_name="job")
        peft.set_adapter("job")
        ids = torch.tensor([encode_prompt(base.tokenizer, req.prompt)], device=args.device)
        with torch.no_grad():
            out = peft.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=req.max_tokens,
                do_sample=False,
                eos_token_id=base.tokenizer.eos_token_id,
                pad_token_id=base.tokenizer.pad_token_id,
            )
        peft_tokens += out.shape[1] - ids.shape[1]
        peft.set_adapter("warm")
        peft.delete_adapter("job")
    peft_s = time.perf_counter() - t0
    engine_tps, peft_tps = engine_tokens / engine_s, peft_tokens / peft_s
    del peft, base
    gc.collect()
    strong = engine_baselines.compare(
        model_fn, catalog, root, requests, keys, results, args.batch, engine_tps
    )
    return {
        "requests": len(requests),
        "adapters_in_workload": len(set(keys)),
        "max_tokens": args.max_tokens,
        "engine_tokens_per_s": round(engine_tps, 1),
        # prompts are as long as the outputs here: the engine also prefilled this many prompt tokens/s
        "engine_prompt_tokens_per_s": round(sum(r.prompt_tokens for r in results) / engine_s, 1),
        "engine_requests_per_s": round(len(requests) / engine_s, 2),
        "naive_peft_requests": n_peft,
        "naive_peft_tokens_per_s": round(peft_tps, 1),
        "ratio_vs_naive_peft": round(engine_tps / peft_tps, 2),
        "goal_ratio": 15,
        "swaps_in": stats.swaps_in,
        "swaps_per_s": round(stats.swaps_in / engine_s, 1),
        "slot_hit_rate": round(stats.slot_hit_rate, 3),
        "host_hit_rate": round(stats.host_hit_rate, 3),
        "slot_evictions": stats.evictions,
        **strong,
    }


def bench_mixed_batch(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace) -> dict:
    """Same loop (ModelRunner prefill + decode steps), same batch: bare unwrapped model vs the wrapped
    model with every row on a different adapter (gather + bmm path)."""
    rows = args.batch
    bare = model_fn()
    wrapped = model_fn()
    batch_ctx = LoraBatch(rows)
    layers = wrap_model(wrapped.model, TARGET_SETS[-1], args.slots * 16, batch_ctx)
    shapes = {p: (m.in_features, m.out_features) for p, m in layers.items()}
    dtype = next(wrapped.model.parameters()).dtype
    adapters = [prepare_adapter(f"a{i}", catalog.weights(i), shapes, 16, dtype) for i in range(rows)]
    slots = [i % args.slots for i in range(rows)]
    for slot, adapter in zip(slots[: args.slots], adapters[: args.slots], strict=True):
        pages = list(range(16 * slot, 16 * slot + adapter.rank))  # as the engine's pool places them
        for path, layer in layers.items():
            pair = adapter.layers.get(path)
            layer.write_pages(pages, *(pair if pair is not None else (None, None)))
        batch_ctx.set_adapter(slot, pages)
    for row, (slot, adapter) in enumerate(zip(slots, adapters, strict=True)):
        batch_ctx.set_row(row, slot, adapter.rank)
    prompts = [encode_prompt(bare.tokenizer, PROMPTS[i % len(PROMPTS)]) for i in range(rows)]
    runners = {
        "bare": ModelRunner(bare.model, args.device, rows),
        "mixed": ModelRunner(wrapped.model, args.device, rows, batch_ctx),
    }

    def run(runner: ModelRunner, batch: list[list[int]]) -> float:
        t0 = time.perf_counter()
        logits = runner.prefill(0, batch)
        runner.tokens[: len(batch)] = logits.argmax(-1)
        width = max(len(p) for p in batch) + 1
        for step in range(args.decode_steps):
            logits = runner.decode_rows(len(batch), width + step)  # device-resident rows, as the engine
            runner.tokens[: len(batch)] = logits.argmax(-1)
        synchronize(args.device)
        return time.perf_counter() - t0

    bare_t, mixed_t = [], []
    run(runners["bare"], prompts), run(runners["mixed"], prompts)  # warm-up
    single = statistics.median(run(runners["bare"], prompts[:1]) for _ in range(args.repeats))
    for _ in range(args.repeats):  # interleaved, so machine load hits both alike
        bare_t.append(run(runners["bare"], prompts))
        mixed_t.append(run(runners["mixed"], prompts))
    tokens = rows * (args.decode_steps + 1)
    b, m = statistics.median(bare_t), statistics.median(mixed_t)
    return {
        "batch": rows,
        "distinct_adapters": len(set(slots)),
        "decode_steps": args.decode_steps,
        "bare_model_tokens_per_s": round(tokens / b, 1),
        "mixed_adapter_tokens_per_s": round(tokens / m, 1),
        "ratio_mixed_vs_bare": round(b / m, 3),
        "goal_ratio": 0.85,
        # what batching alone can buy on this machine: the ceiling for any ratio against one-at-a-time serving
        "bare_model_batch1_tokens_per_s": round((args.decode_steps + 1) / single, 1),
        "bare_batching_gain": round(tokens / b / ((args.decode_steps + 1) / single), 2),
    }


def bench_swap(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace, root: Path) -> dict:
    # One representative adapter: rank 8, attention + MLP targets.
    probe = next(i for i in range(100) if catalog.spec(i) == (8, TARGET_SETS[-1]))
    folder = catalog.write_peft_folder(probe, root)
    base = model_fn()
    peft = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder), adapter_name="warm")
    peft_t = []
    for _ in range(args.swap_repeats):
        t0 = time.perf_counter()
        peft.load_adapter(str(folder), adapter_name="job")
        peft.set_adapter("job")
        peft_t.append(time.perf_counter() - t0)
        peft.set_adapter("warm")
        peft.delete_adapter("job")
    del peft, base
    gc.collect()

    engine = make_engine(model_fn, catalog, args, host_budget_bytes=args.swap_host_mb << 20)
    engine._swapper.synchronous = True  # on CUDA: swap_s is the copy itself, not just queueing it
    result = {
        "adapter_bytes": catalog.weights(probe).nbytes,
        "peft_load_adapter_ms": None,
        "engine_swap_in_ms": None,
        "ratio_vs_peft_load_adapter": None,
        "goal_ratio": 20,
        "swap_in_ms_by_host_tier_size": {},
    }
    rng = random.Random(3)
    period = len(RANKS) * len(TARGET_SETS)  # catalog.spec repeats with this period
    # Only as many adapters as the host tier holds (a bigger model's adapters are bigger): a probe that
    # was evicted would measure a load, not a swap-in.
    fits = int(0.9 * (args.swap_host_mb << 20) // max(1, catalog.weights(probe).nbytes))
    sizes = [size for size in args.catalog_sizes if size <= fits] or [fits]
    result["catalog_sizes_fitting_host_budget"] = sizes
    for size in sizes:
        # `size` distinct adapters of the probe's shape in the host tier, so only the catalog size varies
        keys = [f"a{probe + period * j}" for j in range(size)]
        for k in keys:
            engine.prefetch(k)
        times = []
        for _ in range(args.swap_repeats):
            k = rng.choice(keys)
            engine.slots.forget(k)  # if it sits in a slot, drop it there: every sample is a real copy
            before = engine.swap_s_total
            engine.prompt_logits([[1]], [k])
            times.append(engine.swap_s_total - before)
        result["swap_in_ms_by_host_tier_size"][str(size)] = round(1e3 * statistics.median(times), 4)
    result["host_tier_count"] = len(engine.host)
    peft_ms = 1e3 * statistics.median(peft_t)
    engine_ms = result["swap_in_ms_by_host_tier_size"][str(sizes[-1])]
    result.update(
        peft_load_adapter_ms=round(peft_ms, 3),
        engine_swap_in_ms=engine_ms,
        ratio_vs_peft_load_adapter=round(peft_ms / engine_ms, 1),
    )
    by_size = list(result["swap_in_ms_by_host_tier_size"].values())
    result["swap_in_spread_largest_over_smallest_catalog"] = round(by_size[-1] / by_size[0], 3)
    return result


def bench_memory(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace) -> dict:
    engine = make_engine(model_fn, catalog, args, max_batch=4)
    rng = random.Random(5)

    def swaps(n: int) -> None:
        target = engine.swaps_in + n
        while engine.swaps_in < target:
            keys = {f"a{rng.randrange(args.memory_catalog)}" for _ in range(4)}
            engine.generate_batch_sync([GenerationRequest("hi", k, max_tokens=1) for k in keys])

    while engine.host.evictions == 0:  # fill the host tier to its budget first: steady state
        swaps(16)
    gc.collect()
    start_swaps = engine.swaps_in
    swaps(100)
    gc.collect()
    rss_100 = rss_bytes()
    swaps(args.memory_swaps - 100)
    gc.collect()
    rss_end = rss_bytes()
    return {
        "catalog": args.memory_catalog,
        "swaps": engine.swaps_in - start_swaps,
        "host_tier_mb": round(engine.host.bytes / 2**20, 1),
        "host_budget_mb": args.host_mb,
        "pool_mb": round(engine.pool_bytes / 2**20, 2),
        "rss_after_100_swaps_mb": round(rss_100 / 2**20, 1),
        "rss_after_all_swaps_mb": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_100) / rss_100, 2),
        "goal_growth_pct": 2,
    }


def bench_latency(model_fn: ModelFn, catalog: Catalog, args: argparse.Namespace, capacity_rps: float) -> dict:
    rng = random.Random(9)
    keys = zipf_keys(args.latency_requests, args.adapters, rng)
    rate = 0.6 * capacity_rps
    engine = make_engine(model_fn, catalog, args)

    async def main() -> list:
        await engine.start()
        try:
            tasks = []
            for i, k in enumerate(keys):
                req = GenerationRequest(PROMPTS[i % len(PROMPTS)], f"a{k}", max_tokens=args.max_tokens)
                tasks.append(asyncio.create_task(engine.generate(req)))
                await asyncio.sleep(rng.expovariate(rate))
            return await asyncio.gather(*tasks)
        finally:
            await engine.stop()

    results = asyncio.run(main())
    total = [r.total_s for r in results]
    queue = [r.queue_s for r in results]
    stats = engine.stats()
    return {
        "arrival_rate_rps": round(rate, 2),
        "requests": len(results),
        "p50_s": round(pct(total, 0.5), 3),
        "p99_s": round(pct(total, 0.99), 3),
        "queue_p50_s": round(pct(queue, 0.5), 3),
        "queue_p99_s": round(pct(queue, 0.99), 3),
        "swap_s_mean_ms": round(1e3 * statistics.mean(r.swap_s for r in results), 3),
        "slot_hit_rate": round(stats.slot_hit_rate, 3),
        "host_hit_rate": round(stats.host_hit_rate, 3),
        "tokens_per_s_while_busy": round(stats.tokens_per_s, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller workload, < 2 minutes")
    ap.add_argument(
        "--model",
        default="tiny-llama",
        help="tiny-llama (sized by --hidden/--layers) or smollm2-135m-instruct",
    )
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    # One thread by default: the engine's decode loop runs in a worker thread, and on this 2-core VM
    # torch's intra-op threads there slowed it down (open-loop p50 0.84 s at 1 thread, 5.4 s at 2).
    ap.add_argument("--threads", type=int, default=1, help="torch threads, both sides (0: torch's default)")
    ap.add_argument("--batch", type=int, default=64, help="engine max_batch and the mixed-batch size")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument(
        "--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), bfloat16, float16, float32"
    )
    ap.add_argument("--sections", default="throughput,mixed_batch,sampling,swap,memory,latency")
    args = ap.parse_args()
    args.threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(args.threads)
    quick = args.quick
    if args.model == "llama-1b":  # Llama architecture, 1.06 B parameters, random weights from a config
        args.hidden, args.layers = args.hidden or 2048, args.layers or 28
    args.hidden = args.hidden or (256 if quick else 384)
    args.layers = args.layers or (4 if quick else 6)
    args.slots, args.host_mb = 16, 256
    args.adapters = 100
    args.requests = 64 if quick else 320
    args.max_tokens = 16 if quick else 32
    args.peft_requests = 8 if quick else 24
    args.decode_steps, args.repeats = (16, 3) if quick else (32, 5)
    args.swap_repeats = 10 if quick else 30
    args.catalog_sizes = (10, 100, 1000)
    args.swap_host_mb = 1600
    args.memory_catalog = 1000
    args.memory_swaps = 1000 if quick else 10_000
    args.latency_requests = 24 if quick else 96
    args.sampling_requests, args.sampling_tokens = (32, 96) if quick else (64, 192)

    args.torch_dtype = resolve_dtype(args.dtype, torch.device(args.device), torch.float32)

    def model_fn() -> LoadedModel:
        if args.model in ("tiny-llama", "llama-1b"):
            heads = max(2, args.hidden // 64)
            loaded = tiny_llama(0, hidden=args.hidden, layers=args.layers, heads=heads)
        else:
            loaded = load_base_model(args.model)
        loaded.model.to(device=args.device, dtype=args.torch_dtype)
        return loaded

    probe_model = model_fn()
    catalog = Catalog(probe_model, linear_shapes(probe_model.model))
    cfg = probe_model.model.config
    out: dict = {
        "model": args.model
        if args.model not in ("tiny-llama", "llama-1b")
        else f"{args.model}(hidden={args.hidden}, layers={args.layers})",
        "params_m": round(sum(p.numel() for p in probe_model.model.parameters()) / 1e6, 2),
        "layers": cfg.num_hidden_layers,
        "hidden": cfg.hidden_size,
        "device": args.device,
        "threads": args.threads,
        "dtype": str(args.torch_dtype).removeprefix("torch."),
        "slots": args.slots,
        "max_batch": args.batch,
        "quick": quick,
    }
    del probe_model
    sections = args.sections.split(",")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        root = Path(tmp)
        if "throughput" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] throughput", file=sys.stderr, flush=True)
            out["throughput"] = bench_throughput(model_fn, catalog, args, root)
        if "mixed_batch" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] mixed_batch", file=sys.stderr, flush=True)
            out["mixed_batch"] = bench_mixed_batch(model_fn, catalog, args)
        if "sampling" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] sampling", file=sys.stderr, flush=True)
            fresh = lambda: make_engine(model_fn, catalog, args)  # noqa: E731
            out["sampling"] = engine_hot_path.bench_sampling(fresh, args)
            probe = model_fn()
            out["sampling"]["micro_per_step"] = engine_hot_path.bench_hot_path_micro(
                probe.tokenizer, probe.model.config.vocab_size, args.batch, args.sampling_tokens
            )
        if "swap" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] swap", file=sys.stderr, flush=True)
            out["swap"] = bench_swap(model_fn, catalog, args, root)
        if "memory" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] memory", file=sys.stderr, flush=True)
            out["memory"] = bench_memory(model_fn, catalog, args)
        if "latency" in sections:
            print(f"[{time.perf_counter() - t_all:7.1f} s] latency", file=sys.stderr, flush=True)
            capacity = out.get("throughput", {}).get("engine_requests_per_s", 1.0)
            out["latency"] = bench_latency(model_fn, catalog, args, capacity)
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
