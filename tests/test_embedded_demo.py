"""Demo adapters: the dataset, the cache (train once, reuse, retrain when anything changes) on the tiny
model, and (slow, only when cached for SmolLM2) that the styles show on prompts outside the training data."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from inference.embedded import is_prepared, load_smollm2
from inference.models import SMOLLM2, LoadedModel
from inference.reference import peft_generate
from inference.training import StepLog
from inference.validate import BaseModelSpec, validate_adapter_dir
from node.demo_adapters import (
    DEMO_ADAPTERS,
    DEMO_PROMPTS,
    cached_adapter,
    demo_adapters_dir,
    ensure_demo_adapters,
    manifest_path,
    piratify,
)

# The real specs, shrunk to run on the tiny model in well under a second each.
TINY_SPECS = tuple(dataclasses.replace(s, layers=None, steps=2, batch_size=4) for s in DEMO_ADAPTERS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_dataset_size_and_styles() -> None:
    for spec in DEMO_ADAPTERS:
        examples = spec.examples()
        assert 50 <= len(examples) <= 200
        assert len({p for p, _ in examples}) == len(examples), "no duplicate prompts"
    pirate, robot = (dict(s.examples()) for s in DEMO_ADAPTERS)
    assert all(a.startswith("Arr, matey! ") and a.endswith(" Yo ho ho!") for a in pirate.values())
    assert all(a.startswith("BEEP BOOP. ") and a == a.upper() for a in robot.values())


def test_demo_prompts_are_not_training_prompts() -> None:
    names = {s.name for s in DEMO_ADAPTERS}
    training = {p.lower() for s in DEMO_ADAPTERS for p, _ in s.examples()}
    assert {n for n, _ in DEMO_PROMPTS} == names
    for _, prompt in DEMO_PROMPTS:
        assert prompt.lower() not in training


def test_piratify_swaps_whole_words_and_keeps_capitals() -> None:
    assert piratify("The sea is yours, you know. Isle") == "Th' briny sea be yours, ye know. Isle"


def test_cache_key_changes_with_data_hyperparameters_and_base() -> None:
    spec = DEMO_ADAPTERS[0]
    key = spec.cache_key(SMOLLM2)
    assert key == dataclasses.replace(spec).cache_key(SMOLLM2)
    assert key != dataclasses.replace(spec, steps=spec.steps + 1).cache_key(SMOLLM2)
    assert key != dataclasses.replace(spec, style=str.lower).cache_key(SMOLLM2)
    assert key != spec.cache_key("tiny-llama")


def test_trains_once_then_reuses_then_retrains_when_stale(tiny: LoadedModel, tmp_path: Path) -> None:
    trained: list[str] = []

    def on_step(name: str, log: StepLog) -> None:
        if log.step == 0:
            trained.append(name)

    first = ensure_demo_adapters(tiny, specs=TINY_SPECS, root=tmp_path, on_step=on_step)
    assert trained == ["pirate", "robot"]
    assert first == {"pirate": tmp_path / "pirate", "robot": tmp_path / "robot"}
    spec_of = {s.name: s for s in TINY_SPECS}
    for name, folder in first.items():
        # The folder holds exactly what a node accepts; the manifest lives beside it.
        validate_adapter_dir(folder, BaseModelSpec.from_model(tiny.model, tiny.name))
        manifest = json.loads(manifest_path(tmp_path, name).read_text())
        assert manifest["cache_key"] == spec_of[name].for_model(tiny).cache_key(tiny.name)
        assert manifest["base_model"] == tiny.name

    weights_mtime = (first["pirate"] / "adapter_model.safetensors").stat().st_mtime_ns
    trained.clear()
    assert ensure_demo_adapters(tiny, specs=TINY_SPECS, root=tmp_path, on_step=on_step) == first
    assert trained == []
    assert (first["pirate"] / "adapter_model.safetensors").stat().st_mtime_ns == weights_mtime

    changed = (dataclasses.replace(TINY_SPECS[0], lr=TINY_SPECS[0].lr / 2), TINY_SPECS[1])
    ensure_demo_adapters(tiny, specs=changed, root=tmp_path, on_step=on_step)
    assert trained == ["pirate"]

    trained.clear()
    manifest_path(tmp_path, "robot").write_text("{not json")  # e.g. a crash mid-write by hand
    ensure_demo_adapters(tiny, specs=changed, root=tmp_path, on_step=on_step)
    assert trained == ["robot"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".lock")) == [
        "pirate",
        "pirate.json",
        "robot",
        "robot.json",
    ], "no temp folders left behind"


def test_a_missing_adapter_file_means_retrain(tiny: LoadedModel, tmp_path: Path) -> None:
    spec = TINY_SPECS[1].for_model(tiny)
    ensure_demo_adapters(tiny, specs=(spec,), root=tmp_path)
    assert cached_adapter(spec, tiny.name, tmp_path) == tmp_path / "robot"
    (tmp_path / "robot" / "adapter_model.safetensors").unlink()
    assert cached_adapter(spec, tiny.name, tmp_path) is None


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("OPENLORA_REQUIRE_EMBEDDED") != "1"  # `make test` trains them first; then this must run
    and (
        not is_prepared()
        or any(not manifest_path(demo_adapters_dir() / SMOLLM2, s.name).exists() for s in DEMO_ADAPTERS)
    ),
    reason="SmolLM2 demo adapters not trained yet: run `python -m node.demo_adapters` (about 3 min each)",
)
def test_demo_styles_show_on_unseen_prompts() -> None:
    base = load_smollm2(prepare=False)
    folders = ensure_demo_adapters(base)  # cached: no training
    prefix = {"pirate": "Arr", "robot": "BEEP BOOP."}
    for name, prompt in DEMO_PROMPTS:
        styled = peft_generate(base, folders[name], prompt, 48).text
        plain = peft_generate(base, None, prompt, 48).text
        assert styled.startswith(prefix[name]), f"{name} on {prompt!r}: {styled!r}"
        assert not plain.startswith(prefix[name]), f"base on {prompt!r}: {plain!r}"
        if name == "robot":
            letters = [c for c in styled if c.isalpha()]
            assert sum(c.isupper() for c in letters) >= 0.9 * len(letters), styled
