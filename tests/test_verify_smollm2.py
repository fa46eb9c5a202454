"""TOPLOC proofs on the embedded SmolLM2-135M (CPU, float32): 20 honest results from mixed batches verify,
10 dishonest ones (one of each kind; "another base model" is an int8-quantized copy of SmolLM2) fail.
With test_verify.py's tiny-model share: 500 honest and 200 dishonest results."""

from __future__ import annotations

import os
import random

import pytest
import torch

from inference.adapter import AdapterWeights
from inference.embedded import is_prepared, load_smollm2, smollm2_dir
from inference.models import LoadedModel
from inference.verify import Thresholds, verify_result
from tests.verify_cases import (
    KINDS,
    cheat_adapters,
    dishonest_claim,
    engine_with,
    honest_claims,
    make_adapters,
)

needs_smollm2 = pytest.mark.skipif(
    not (is_prepared() or os.environ.get("OPENLORA_REQUIRE_EMBEDDED") == "1"),
    reason=f"SmolLM2 not prepared in {smollm2_dir()}: run `python -m inference.embedded prepare`",
)
pytestmark = needs_smollm2


def int8_copy() -> LoadedModel:
    """SmolLM2 with every projection fake-quantized to int8 per output row: a cheaper "same" model."""
    base = load_smollm2(prepare=False)
    with torch.no_grad():
        for name, mod in base.model.named_modules():
            if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1].endswith("proj"):
                w = mod.weight
                step = w.abs().amax(dim=1, keepdim=True) / 127
                w.copy_((w / step).round().clamp(-127, 127) * step)
    return base


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_smollm2(prepare=False)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory, smollm2: LoadedModel) -> dict[str, AdapterWeights]:
    return make_adapters(smollm2, tmp_path_factory.mktemp("smollm2-adapters"), scale=0.03)


def test_smollm2_honest_results_verify(smollm2: LoadedModel, adapters: dict[str, AdapterWeights]) -> None:
    torch.set_num_threads(2)
    rng = random.Random(135)
    engine = engine_with(load_smollm2(prepare=False), adapters)
    claims = honest_claims(engine, list(adapters), rng, 20, max_tokens=24)
    torch.set_num_threads(1)
    for claim in claims:
        weights = adapters[claim.adapter] if claim.adapter else None
        # passing the float32 thresholds implies passing TOPLOC's: each bound is tighter
        report = verify_result(
            smollm2, weights, claim.prompt_ids, claim.output_ids, claim.proof, thresholds=Thresholds.fp32()
        )
        assert report.passed, (claim.adapter, report.reason)
    torch.set_num_threads(2)


def test_smollm2_dishonest_results_fail(smollm2: LoadedModel, adapters: dict[str, AdapterWeights]) -> None:
    torch.set_num_threads(2)
    rng = random.Random(576)
    cheat = engine_with(load_smollm2(prepare=False), cheat_adapters(adapters))
    quantized = engine_with(int8_copy(), adapters)
    for kind in KINDS:
        claim = dishonest_claim(kind, cheat, quantized, smollm2, adapters, rng, max_tokens=10)
        report = verify_result(
            smollm2,
            adapters[claim.adapter],
            claim.prompt_ids,
            claim.output_ids,
            claim.proof,
            thresholds=Thresholds.fp32(),
        )
        assert not report.passed, (kind, claim.output_ids)
