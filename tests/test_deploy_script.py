"""The forge deployment script: deterministic addresses, idempotent re-runs (scripts/check-deploy.sh)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    not (ROOT / ".tools/bin/anvil").exists() or shutil.which("bash") is None,
    reason="needs the Foundry tools in .tools/bin (make setup)",
)
def test_deploy_is_deterministic_and_idempotent() -> None:
    r = subprocess.run(
        [str(ROOT / "scripts/check-deploy.sh")], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check-deploy: OK" in r.stdout
