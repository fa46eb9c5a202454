"""Build hook: files the wheel carries that are generated or live outside the packages.

- `chain/abi/<Name>.json`: each contract's ABI and bytecode, copied from forge's output
  `contracts/out/<Name>.sol/<Name>.json` at build time (chain/artifacts.py reads them when installed);
- `node/share/openlora-node.service`: the systemd unit (scripts/openlora-node.service).

A wheel built from a checkout needs `forge build` first (`make contracts`); without it the build stops and
says so. A wheel built from this project's sdist uses the copies the sdist carries. An editable install
(`pip install -e .`) copies nothing: in a checkout chain/artifacts.py reads forge's output directly.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import json
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
CONTRACT_NAMES = ("AdapterRegistry", "NodeRegistry", "JobMarket", "ValidatorArbiter")  # as chain/artifacts.py
FORGE_OUT = ROOT / "contracts" / "out"
UNIT = ("scripts/openlora-node.service", "node/share/openlora-node.service")


class BuildInputMissing(SystemExit):
    pass


def _abi_from_forge(name: str) -> bytes:
    """The part of forge's artifact the node reads: ABI and creation bytecode (plus the runtime code)."""
    data = json.loads((FORGE_OUT / f"{name}.sol" / f"{name}.json").read_text())
    packaged = {
        "contractName": name,
        "abi": data["abi"],
        "bytecode": {"object": data["bytecode"]["object"]},
        "deployedBytecode": {"object": data["deployedBytecode"]["object"]},
    }
    return (json.dumps(packaged, indent=1, sort_keys=True) + "\n").encode()


def generated_files() -> dict[str, bytes]:
    """{path inside the wheel: content}, from the checkout, else from an unpacked sdist's copies."""
    files: dict[str, bytes] = {}
    missing = []
    for name in CONTRACT_NAMES:
        dest = f"chain/abi/{name}.json"
        if (FORGE_OUT / f"{name}.sol" / f"{name}.json").exists():
            files[dest] = _abi_from_forge(name)
        elif (ROOT / dest).exists():  # an unpacked sdist
            files[dest] = (ROOT / dest).read_bytes()
        else:
            missing.append(name)
    if missing:
        raise BuildInputMissing(
            f"error: forge output for {', '.join(missing)} not found in {FORGE_OUT}: the wheel must carry "
            "the contract ABIs. Run `make contracts` (or `cd contracts && forge build`), then build again."
        )
    src, dest = UNIT
    for candidate in (ROOT / src, ROOT / dest):
        if candidate.exists():
            files[dest] = candidate.read_bytes()
            break
    else:
        raise BuildInputMissing(f"error: {src} not found: build from a full checkout or this project's sdist")
    return files


def write_files(root: Path) -> list[str]:
    written = []
    for rel, data in generated_files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(str(path))
    return written


class build_py_with_generated(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            write_files(Path(self.build_lib))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        if self.editable_mode:
            return outputs
        return [*outputs, *(str(Path(self.build_lib) / rel) for rel in generated_files())]


class sdist_with_generated(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        write_files(Path(base_dir))


setup(cmdclass={"build_py": build_py_with_generated, "sdist": sdist_with_generated})
