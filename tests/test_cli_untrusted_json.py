"""Untrusted JSON through the CLI: a deep-nested adapter_config.json or safetensors header is a clear
refusal (exit 2), never a crash. A dependency raises the interpreter's recursion limit, so plain
json.loads of 100,000 '[' overflows the C stack and kills the process (SIGSEGV): each check runs in a
real child process, which such a crash would kill."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from inference.models import LoadedModel
from tests.factories import make_peft_adapter

DEEP = b"[" * 100_000 + b"]" * 100_000


def _openlora(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], cwd=root, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("where", ["config", "header"])
@pytest.mark.parametrize("command", ["publish", "inspect"])
def test_deep_nested_json_is_refused_not_a_crash(
    tmp_path: Path, tiny: LoadedModel, where: str, command: str
) -> None:
    folder = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=1)
    if where == "config":
        (folder / "adapter_config.json").write_bytes(b'{"r": 4, "x": ' + DEEP + b"}")
    else:
        weights = folder / "adapter_model.safetensors"
        data = weights.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + header_len])
        nested = json.dumps(header).encode()[:-1] + b', "__metadata__": ' + DEEP + b"}"
        weights.write_bytes(struct.pack("<Q", len(nested)) + nested + data[8 + header_len :])
    args = ["adapter", command, str(folder)]
    if command == "publish":
        args += ["--store", str(tmp_path / "blocks"), "--no-register"]
    done = _openlora(*args, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])  # SIGSEGV would be -11
    assert "nested" in done.stderr and "Traceback" not in done.stderr
