"""Contract ABIs and bytecode, never copied by hand: forge's build output in a checkout, or the copy of it
that the wheel carries as package data (`chain/abi/<Name>.json`, written by setup.py at build time)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FORGE_OUT = REPO_ROOT / "contracts" / "out"
PACKAGED_ABI = Path(__file__).resolve().parent / "abi"

CONTRACT_NAMES = ("AdapterRegistry", "NodeRegistry", "JobMarket", "ValidatorArbiter")


class ArtifactMissingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str
    source: Path | None = None  # the file it was read from


def forge_artifact_path(name: str, out_dir: Path = FORGE_OUT) -> Path:
    return Path(out_dir) / f"{name}.sol" / f"{name}.json"


def packaged_artifact_path(name: str) -> Path:
    return PACKAGED_ABI / f"{name}.json"


def artifact_paths(name: str, out_dir: Path | None = None) -> list[Path]:
    """Where `name` is looked for, in order: forge's output (a checkout, so `forge build` edits are seen),
    then the wheel's package data. An explicit `out_dir` is the only place looked at."""
    if out_dir is not None:
        return [forge_artifact_path(name, out_dir)]
    return [forge_artifact_path(name), packaged_artifact_path(name)]


@cache
def load_artifact(name: str, out_dir: Path | None = None) -> Artifact:
    tried = artifact_paths(name, out_dir)
    for path in tried:
        if path.exists():
            data = json.loads(path.read_text())  # our own build output, not untrusted input
            return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"]["object"], source=path)
    raise ArtifactMissingError(
        f"{' or '.join(map(str, tried))} not found: build the contracts first "
        "(`make contracts`, or `cd contracts && forge build`); an installed wheel carries them in chain/abi/"
    )
