"""The GPU check's driver (run by scripts/gpu_check.sh, which installs what it needs first): the engine's
CUDA tests, the engine benchmark on a 1B+ Llama-architecture model built from a config (random weights,
no hub download), and a swap-in of a rank-16 adapter of Llama-2-7B's shapes from the pinned host tier on
the side stream. Prints ONE JSON object on stdout (progress goes to stderr).

    python scripts/gpu_check.py             # on a CUDA machine
    python scripts/gpu_check.py --dry-run   # the same steps on CPU with a tiny model (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TESTS = ["tests/test_engine_cuda.py", "tests/test_engine_gpu_path.py"]
LLAMA_7B = {"layers": 32, "hidden": 4096, "intermediate": 11008}  # Llama-2-7B (no GQA)


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def run_tests(env: dict[str, str], timeout: int) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail = proc.stdout.strip().splitlines()[-1:] or [""]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", tail[0])}
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])
    return {"rc": proc.returncode, "summary": tail[0], **counts, "s": round(time.perf_counter() - t0, 1)}


def run_bench(args: argparse.Namespace, env: dict[str, str], timeout: int) -> dict:
    if args.dry_run:
        model = ["--model", "tiny-llama", "--hidden", "64", "--layers", "2", "--batch", "8"]
        sections = "mixed_batch,throughput"
    else:
        model = ["--model", "llama-1b", "--batch", "64"]
        sections = "mixed_batch,throughput,swap"
    cmd = [sys.executable, "scripts/bench/engine.py", "--quick", "--device", args.device, *model]
    cmd += ["--sections", sections]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        return {"rc": proc.returncode, "s": round(time.perf_counter() - t0, 1)}
    return {"rc": 0, "s": round(time.perf_counter() - t0, 1), **json.loads(proc.stdout)}


def swap_7b(device: str, dry_run: bool) -> dict:
    """A rank-16 adapter on every projection of a Llama-2-7B-shaped model (bf16; 32 x 7 layers), host tier
    (pinned on CUDA) -> pool pages through the engine's own Swapper and MultiLoraLinear.write_pages."""
    import torch
    from torch import nn

    from inference.engine.lora_layer import LoraBatch, MultiLoraLinear
    from inference.engine.swap import Swapper

    shape = {"layers": 2, "hidden": 64, "intermediate": 128} if dry_run else LLAMA_7B
    h, m = shape["hidden"], shape["intermediate"]
    per_layer = [(h, h)] * 4 + [(h, m), (h, m), (m, h)]  # q k v o, gate up, down
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    class Shape(nn.Module):  # just enough of an nn.Linear to size a pool: no base weights allocated
        def __init__(self, n_in: int, n_out: int) -> None:
            super().__init__()
            self.in_features, self.out_features = n_in, n_out
            self.weight = nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)

    batch = LoraBatch()
    layers = [MultiLoraLinear(Shape(i, o), 64, batch) for _ in range(shape["layers"]) for i, o in per_layer]  # type: ignore[arg-type]
    rank, pin = 16, device == "cuda"
    host = [
        (torch.randn(rank, i).to(dtype), torch.randn(rank, o).to(dtype))
        for _ in range(shape["layers"])
        for i, o in per_layer
    ]
    if pin:
        host = [(a.pin_memory(), b.pin_memory()) for a, b in host]
    nbytes = sum(a.nbytes + b.nbytes for a, b in host)
    swapper = Swapper(torch.device(device))
    swapper.synchronous = True
    times = []
    for trial in range(6):
        pages = list(range(16 * (trial % 4), 16 * (trial % 4) + rank))
        t0 = time.perf_counter()
        with swapper.lock:
            swapper.copy(
                lambda pages=pages: [
                    lay.write_pages(pages, a, b) for lay, (a, b) in zip(layers, host, strict=True)
                ]
            )
        times.append(time.perf_counter() - t0)
    best = sorted(times[1:])[len(times[1:]) // 2]  # median after a warm-up copy
    return {
        "shape": shape,
        "rank": rank,
        "adapter_mb": round(nbytes / 2**20, 1),
        "swap_in_ms_median": round(1e3 * best, 3),
        "goal_ms": 2.0,
        "gb_per_s": round(nbytes / best / 1e9, 1),
        "pinned": pin,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model: the same steps, for CI")
    args = ap.parse_args()
    t_all = time.perf_counter()
    import torch

    args.device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        print(
            json.dumps({"ok": False, "error": "no CUDA device visible to torch: run with --dry-run on CPU"})
        )
        sys.exit(2)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out: dict = {
        "dry_run": args.dry_run,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    try:
        import flash_attn  # noqa: F401

        out["flash_attn"] = True
    except ImportError:
        out["flash_attn"] = False
    log("tests")
    out["tests"] = run_tests(env, timeout=300 if not args.dry_run else 120)
    log("swap of a 7B-shaped rank-16 adapter")
    out["swap_7b"] = swap_7b(args.device, args.dry_run)
    log("bench")
    out["bench"] = run_bench(args, env, timeout=420 if not args.dry_run else 120)
    out["ok"] = out["tests"]["rc"] == 0 and out["bench"]["rc"] == 0
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
