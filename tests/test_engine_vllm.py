"""The optional vLLM backend: the validated-weights → PEFT folder path it loads from (tested here), its
refusal where vLLM is absent (here), and generation equal to PEFT where vLLM and a GPU exist."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inference.engine import EngineConfig, GenerationRequest
from inference.engine.peft_folder import write_peft_folder
from inference.models import LoadedModel
from inference.reference import peft_generate
from inference.validate import BaseModelSpec, validate_adapter_dir
from node.config import parse_config
from node.errors import StartupError
from node.runtime import engine_factory
from tests.factories import make_peft_adapter

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_validated_weights_written_back_as_a_peft_folder_serve_the_same(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    original = make_peft_adapter(
        tiny, tmp_path / "upload", rank=8, targets=("q_proj", "v_proj", "down_proj"), seed=7
    )
    spec = BaseModelSpec.from_model(tiny.model, name=tiny.name)
    weights = validate_adapter_dir(original, spec)
    folder = write_peft_folder(weights, tmp_path / "served" / "a1", base_model="tiny-llama")
    again = validate_adapter_dir(folder, spec)
    assert again.rank == weights.rank and again.alpha == weights.alpha
    assert set(again.layers) == set(weights.layers)
    for path, pair in weights.layers.items():
        assert torch.equal(again.layers[path].a, pair.a) and torch.equal(again.layers[path].b, pair.b)
    prompt = "Served from the folder the backend loads."
    assert peft_generate(tiny, folder, prompt, 8).text == peft_generate(tiny, original, prompt, 8).text

    other = validate_adapter_dir(make_peft_adapter(tiny, tmp_path / "other", rank=4, seed=8), spec)
    write_peft_folder(other, folder)  # rewriting a key replaces the folder whole
    assert load_file(str(folder / "adapter_model.safetensors")).keys() == {
        f"base_model.model.{p}.lora_{ab}.weight" for p in other.layers for ab in "AB"
    }
    assert sorted(p.name for p in folder.parent.iterdir()) == ["a1"]  # no temp or old folders left


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here: the refusal path does not apply")
def test_vllm_backend_is_refused_with_a_clear_line_where_vllm_is_absent() -> None:
    from inference.engine.vllm_backend import VllmEngine, VllmUnavailable

    with pytest.raises(StartupError, match="vLLM is not installed"):
        engine_factory(parse_config({"engine": {"backend": "vllm"}}))
    with pytest.raises(StartupError, match="serves a model folder"):
        engine_factory(parse_config({"node": {"base_model": "tiny-llama"}, "engine": {"backend": "vllm"}}))
    assert engine_factory(parse_config({})) is None  # the built-in engine
    with pytest.raises(VllmUnavailable, match="openlora-node\\[vllm\\]"):
        VllmEngine(None, EngineConfig(), model_dir=Path("."))  # type: ignore[arg-type]


@pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a CUDA GPU")
def test_vllm_backend_greedy_equals_peft(tmp_path: Path) -> None:
    from inference.embedded import load_smollm2, prepare_smollm2
    from inference.engine.vllm_backend import VllmEngine

    base = load_smollm2()
    adapter_dir = make_peft_adapter(base, tmp_path / "adapter", rank=8, seed=9)
    weights = validate_adapter_dir(adapter_dir, BaseModelSpec.from_model(base.model, name=base.name))
    engine = VllmEngine(
        base, EngineConfig(max_slots=4, max_rank=16, max_batch=8), model_dir=prepare_smollm2()
    )
    engine.add_adapter("a", weights)
    prompt = "What is a LoRA adapter?"

    async def run() -> str:
        await engine.start()
        try:
            return (await engine.generate(GenerationRequest(prompt, "a", max_tokens=12))).text
        finally:
            await engine.stop()

    assert asyncio.run(run()) == peft_generate(base, adapter_dir, prompt, 12).text
