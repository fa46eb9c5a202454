"""Contract ABIs and bytecode, read from forge's build output (never copied by hand)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FORGE_OUT = REPO_ROOT / "contracts" / "out"

CONTRACT_NAMES = ("AdapterRegistry", "NodeRegistry", "JobMarket")


class ArtifactMissingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict]
    bytecode: str


@cache
def load_artifact(name: str, out_dir: Path = FORGE_OUT) -> Artifact:
    path = out_dir / f"{name}.sol" / f"{name}.json"
    if not path.exists():
        raise ArtifactMissingError(
            f"{path} not found: build the contracts first "
            "(`make contracts`, or `cd contracts && forge build`)"
        )
    data = json.loads(path.read_text())
    return Artifact(name=name, abi=data["abi"], bytecode=data["bytecode"]["object"])
