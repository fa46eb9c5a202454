"""`openlora dev --once` through the real entry point, on the tiny model: the whole system as separate
processes (Anvil, gateway, node), demo jobs paid, every process stopped afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from chain.artifacts import REPO_ROOT


def test_openlora_dev_once_serves_and_pays_demo_jobs(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OPENLORA_HOME": str(tmp_path / "home"),
        "COLUMNS": "200",
        "PATH": f"{REPO_ROOT / '.tools' / 'bin'}:{os.environ['PATH']}",
    }
    workdir = tmp_path / "dev"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "dev",
            "--once",
            "--base-model",
            "tiny-llama",
            "--workdir",
            str(workdir),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    jobs = re.findall(r"job (\d+) · adapter (\w+)", out)
    assert len(jobs) >= 2 and len({name for _, name in jobs}) >= 2, out[-4000:]
    assert len(re.findall(r"paid\s+node [0-9.]+ ETH · adapter publisher [0-9.]+ ETH · protocol", out)) == len(
        jobs
    )
    # every process it started is gone: nothing listens on the ports it wrote into the node config
    port = re.search(r"port = (\d+)", (workdir / "node.toml").read_text()).group(1)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(workdir / "node.toml") not in ps and f"--port {port}" not in ps
    node_log = (workdir / "node.log").read_text()
    assert "node stopped" in node_log and " ERROR " not in node_log  # drained and stopped cleanly
