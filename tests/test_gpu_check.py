"""scripts/gpu_check.sh --dry-run: the GPU check's own steps (tests, 7B-shaped swap, bench) on CPU with a
tiny model, so the script a lent GPU will run is known to work before one is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_passes_and_prints_one_json_object() -> None:
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout[-2000:]
    out = json.loads(lines[0])
    assert out["ok"] and out["dry_run"] and out["device"] == "cpu"
    assert out["tests"]["rc"] == 0 and out["tests"]["passed"] >= 7 and "failed" not in out["tests"]
    assert out["swap_7b"]["swap_in_ms_median"] > 0
    bench = out["bench"]
    assert bench["device"] == "cpu" and bench["mixed_batch"]["ratio_mixed_vs_bare"] > 0
    assert bench["throughput"]["peft_preloaded_rows_equal_engine"].split("/")[0] != "0"
