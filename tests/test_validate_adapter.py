"""Whole-adapter admission: a real PEFT adapter passes and reproduces PEFT's delta; a hostile corpus is
refused with the right reason; random mutations never raise anything but AdapterRejected."""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from inference.adapter import AdapterWeights
from inference.models import LoadedModel
from inference.validate import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AdapterRejected,
    BaseModelSpec,
    Reason,
    ValidationLimits,
    validate_adapter_dir,
    validate_adapter_files,
)
from tests.factories import make_peft_adapter

Files = dict[str, bytes]
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def spec(tiny: LoadedModel) -> BaseModelSpec:
    return BaseModelSpec.from_model(tiny.model, tiny.name)


@pytest.fixture(scope="module")
def adapter_dir(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_peft_adapter(tiny, tmp_path_factory.mktemp("adapter"), rank=4, alpha=8, seed=3)


@pytest.fixture(scope="module")
def good(adapter_dir: Path) -> Files:
    return {name: (adapter_dir / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


def split(files: Files) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    return json.loads(files[CONFIG_FILE]), load_safetensors(files[WEIGHTS_FILE])


def rebuild(
    files: Files, config: dict[str, Any] | None = None, tensors: dict[str, torch.Tensor] | None = None
) -> Files:
    old_config, old_tensors = split(files)
    return {
        CONFIG_FILE: json.dumps(old_config if config is None else config).encode(),
        WEIGHTS_FILE: save_safetensors(
            old_tensors if tensors is None else tensors, metadata={"format": "pt"}
        ),
    }


def with_header(files: Files, edit: Callable[[dict[str, Any]], None], data: bytes | None = None) -> Files:
    """Re-encode the safetensors header after `edit`, keeping (or replacing) the data section."""
    weights = files[WEIGHTS_FILE]
    (n,) = struct.unpack_from("<Q", weights)
    header = json.loads(weights[8 : 8 + n])
    edit(header)
    body = json.dumps(header).encode()
    return {
        **files,
        WEIGHTS_FILE: struct.pack("<Q", len(body)) + body + (weights[8 + n :] if data is None else data),
    }


def with_config(files: Files, **changes: Any) -> Files:
    return {**files, CONFIG_FILE: json.dumps({**json.loads(files[CONFIG_FILE]), **changes}).encode()}


def refuse(files: Files, spec: BaseModelSpec, reason: Reason, limits: ValidationLimits | None = None) -> str:
    with pytest.raises(AdapterRejected) as info:
        validate_adapter_files(files, spec, limits or ValidationLimits())
    assert info.value.reason == reason, str(info.value)
    return info.value.detail


# ---- the base model spec -----------------------------------------------------------------------------


def test_spec_lists_linear_modules_with_shapes(tiny: LoadedModel, spec: BaseModelSpec) -> None:
    assert spec.name == "tiny-llama"
    assert len(spec.modules) == 14  # 2 layers x 7 projections, lm_head excluded
    assert spec.modules["model.layers.0.self_attn.q_proj"] == (64, 64)
    assert spec.modules["model.layers.1.self_attn.k_proj"] == (64, 32)  # grouped-query attention
    assert spec.modules["model.layers.0.mlp.down_proj"] == (128, 64)
    assert "lm_head" not in spec.modules
    assert BaseModelSpec.from_model(tiny.model, include_lm_head=True).modules["lm_head"] == (64, 259)


# ---- a real adapter ----------------------------------------------------------------------------------


def assert_matches_peft(tiny: LoadedModel, adapter_dir: Path, weights: AdapterWeights) -> None:
    """For every adapted linear: x @ A.T @ B.T * scale == PEFT layer(x) - base layer(x)."""
    peft_model = PeftModel.from_pretrained(copy.deepcopy(tiny.model), str(adapter_dir))
    gen = torch.Generator().manual_seed(0)
    for path, pair in weights.layers.items():
        layer = peft_model.base_model.model.get_submodule(path)
        x = torch.randn(5, pair.a.shape[1], generator=gen)
        with torch.no_grad():
            expected = layer(x) - layer.base_layer(x)
        got = (x @ pair.a.T) @ pair.b.T * weights.scale
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_real_peft_adapter_passes_and_reproduces_peft(
    tiny: LoadedModel, spec: BaseModelSpec, adapter_dir: Path, good: Files
) -> None:
    weights = validate_adapter_files(good, spec)
    assert (weights.rank, weights.alpha, weights.scale) == (4, 8.0, 2.0)
    assert weights.target_modules == ("q_proj", "v_proj")
    assert sorted(weights.layers) == [
        f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")
    ]
    assert all(p.a.dtype == torch.float32 and p.b.dtype == torch.float32 for p in weights.layers.values())
    assert_matches_peft(tiny, adapter_dir, weights)
    # The folder form (with PEFT's README.md next to the two files) gives the same weights.
    from_dir = validate_adapter_dir(adapter_dir, spec)
    assert (adapter_dir / "README.md").exists()
    for path, pair in weights.layers.items():
        assert torch.equal(from_dir.layers[path].a, pair.a) and torch.equal(from_dir.layers[path].b, pair.b)


def test_all_seven_targets_rslora_in_bf16_match_peft(
    tiny: LoadedModel, spec: BaseModelSpec, tmp_path: Path
) -> None:
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    adapter_dir = make_peft_adapter(tiny, tmp_path, rank=8, alpha=16, targets=targets, seed=5)
    files = {name: (adapter_dir / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}
    config, tensors = split(files)
    files = rebuild(
        files, {**config, "use_rslora": True}, {k: v.to(torch.bfloat16) for k, v in tensors.items()}
    )
    for name, data in files.items():
        (adapter_dir / name).write_bytes(data)
    weights = validate_adapter_dir(adapter_dir, spec)
    assert len(weights.layers) == 14 and weights.scale == pytest.approx(16 / 8**0.5)
    assert_matches_peft(tiny, adapter_dir, weights)


def test_layers_to_transform_is_honoured(spec: BaseModelSpec, good: Files) -> None:
    config, tensors = split(good)
    layer0 = {k: v for k, v in tensors.items() if ".layers.0." in k}
    weights = validate_adapter_files(rebuild(good, {**config, "layers_to_transform": [0]}, layer0), spec)
    assert sorted(weights.layers) == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    # the same config with layer-1 tensors present: they target a layer the config leaves alone
    refuse(with_config(good, layers_to_transform=[0]), spec, Reason.UNKNOWN_TARGET_MODULE)


# ---- the hostile corpus ------------------------------------------------------------------------------


def state_dict(good: Files) -> dict[str, torch.Tensor]:
    return split(good)[1]


def torch_save_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # written, never loaded
    return buffer.getvalue()


def test_pickle_bin_is_refused_without_being_loaded(spec: BaseModelSpec, good: Files) -> None:
    pickled = torch_save_bytes(state_dict(good))
    detail = refuse({CONFIG_FILE: good[CONFIG_FILE], "adapter_model.bin": pickled}, spec, Reason.PICKLE)
    assert "adapter_model.bin" in detail and "safetensors" in detail
    # next to a valid safetensors file too: nothing with a pickle suffix is tolerated
    refuse({**good, "adapter_model.bin": pickled}, spec, Reason.PICKLE)
    # and under the safetensors name: the content is sniffed (zip from torch.save, raw pickle protocol 2-5)
    refuse({**good, WEIGHTS_FILE: pickled}, spec, Reason.PICKLE)
    for protocol in (2, 4, 5):
        refuse({**good, WEIGHTS_FILE: pickle.dumps({"a": [1, 2]}, protocol=protocol)}, spec, Reason.PICKLE)


def test_pickle_folder_is_refused_before_anything_is_read(
    spec: BaseModelSpec, good: Files, tmp_path: Path
) -> None:
    (tmp_path / CONFIG_FILE).write_bytes(good[CONFIG_FILE])
    (tmp_path / "adapter_model.bin").write_bytes(torch_save_bytes({"x": torch.ones(2)}))
    with pytest.raises(AdapterRejected) as info:
        validate_adapter_dir(tmp_path, spec)
    assert info.value.reason == Reason.PICKLE


def test_header_claiming_100_mb(spec: BaseModelSpec, good: Files) -> None:
    weights = struct.pack("<Q", 100 * 1024 * 1024) + good[WEIGHTS_FILE][8:]
    refuse({**good, WEIGHTS_FILE: weights}, spec, Reason.HEADER_TOO_LARGE)


def test_offsets_past_the_end(spec: BaseModelSpec, good: Files) -> None:
    def shift(header: dict[str, Any]) -> None:
        begin, end = header[f"{Q0}.lora_B.weight"]["data_offsets"]
        header[f"{Q0}.lora_B.weight"]["data_offsets"] = [begin + 100_000, end + 100_000]

    assert "lora_B" in refuse(with_header(good, shift), spec, Reason.OFFSET_OUT_OF_BOUNDS)


def test_overlapping_offsets(spec: BaseModelSpec, good: Files) -> None:
    def alias(header: dict[str, Any]) -> None:  # two tensors read the same bytes
        header[f"{Q0}.lora_B.weight"]["data_offsets"] = header[f"{Q0}.lora_A.weight"]["data_offsets"]
        header[f"{Q0}.lora_B.weight"]["shape"] = [64, 4]

    refuse(with_header(good, alias), spec, Reason.OVERLAPPING_OFFSETS)


@pytest.mark.parametrize("dtype", ["I64", "F64", "I32"])
def test_disallowed_dtype(spec: BaseModelSpec, good: Files, dtype: str) -> None:
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_A.weight"] = tensors[f"{Q0}.lora_A.weight"].to(
        getattr(torch, {"I64": "int64", "F64": "float64", "I32": "int32"}[dtype])
    )
    assert Q0 in refuse(rebuild(good, tensors=tensors), spec, Reason.BAD_DTYPE)


def test_wrong_shape_names_the_tensor_and_both_shapes(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_A.weight"] = torch.randn(4, 32)
    detail = refuse(rebuild(good, tensors=tensors), spec, Reason.SHAPE_MISMATCH)
    assert "lora_A" in detail and "[4, 32]" in detail and "[4, 64]" in detail


def test_rank_differing_from_config(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_A.weight"] = torch.randn(8, 64)
    tensors[f"{Q0}.lora_B.weight"] = torch.randn(64, 8)
    assert "r = 4" in refuse(rebuild(good, tensors=tensors), spec, Reason.RANK_MISMATCH)


def test_rank_4096_from_a_hand_built_header(spec: BaseModelSpec, good: Files) -> None:
    """Shapes of rank 4096 are only written in the header: nothing of that size is ever allocated."""

    def rank_4096(header: dict[str, Any]) -> None:
        for name, entry in header.items():
            if name != "__metadata__":
                rows, cols = entry["shape"]
                entry["shape"] = [4096, cols] if ".lora_A." in name else [rows, 4096]

    files = with_header(with_config(good, r=4096), rank_4096)
    refuse(files, spec, Reason.RANK_TOO_LARGE)
    # A node configured for huge ranks still refuses: the header's sizes no longer match its offsets.
    refuse(files, spec, Reason.SIZE_MISMATCH, ValidationLimits(max_rank=8192))


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(float("nan"), torch.float32), (float("inf"), torch.float32), (float("-inf"), torch.float16)],
)
def test_non_finite_weights(spec: BaseModelSpec, good: Files, value: float, dtype: torch.dtype) -> None:
    tensors = {k: v.to(dtype) for k, v in state_dict(good).items()}
    tensors[f"{Q0}.lora_B.weight"][3, 1] = value
    assert "lora_B" in refuse(rebuild(good, tensors=tensors), spec, Reason.NON_FINITE)


def test_huge_values_and_norms(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_B.weight"] = tensors[f"{Q0}.lora_B.weight"] * 1e6
    assert "magnitude" in refuse(rebuild(good, tensors=tensors), spec, Reason.NORM_TOO_LARGE)
    # every value small, but the matrix norm over the limit
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_A.weight"] = torch.full((4, 64), 999.0)
    assert "Frobenius" in refuse(rebuild(good, tensors=tensors), spec, Reason.NORM_TOO_LARGE)
    # A and B each fine, their product scale * B @ A too strong for a tight node
    assert "B @ A" in refuse(good, spec, Reason.NORM_TOO_LARGE, ValidationLimits(max_delta_norm=1.0))


def test_config_targeting_unknown_modules(spec: BaseModelSpec, good: Files) -> None:
    refuse(with_config(good, target_modules=["q_proj", "v_proj", "wte"]), spec, Reason.UNKNOWN_TARGET_MODULE)
    # allowed by the node, but the base model has no such module
    limits = ValidationLimits(allowed_targets={"q_proj", "v_proj", "c_attn"})
    detail = refuse(
        with_config(good, target_modules=["q_proj", "v_proj", "c_attn"]),
        spec,
        Reason.UNKNOWN_TARGET_MODULE,
        limits,
    )
    assert "c_attn" in detail and "tiny-llama" in detail


def test_tensor_for_a_module_the_config_does_not_target(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"] = torch.randn(4, 64)
    tensors["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"] = torch.randn(32, 4)
    assert "k_proj" in refuse(rebuild(good, tensors=tensors), spec, Reason.UNKNOWN_TARGET_MODULE)


def test_tensor_for_a_module_the_base_does_not_have(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 64)
    refuse(rebuild(good, tensors=tensors), spec, Reason.UNKNOWN_TARGET_MODULE)


@pytest.mark.parametrize(
    "name",
    ["base_model.model.lm_head.weight", f"{Q0}.lora_magnitude_vector", f"{Q0}.lora_A.bias", "evil"],
)
def test_tensor_that_is_not_a_lora_weight(spec: BaseModelSpec, good: Files, name: str) -> None:
    tensors = {**state_dict(good), name: torch.zeros(4)}
    refuse(rebuild(good, tensors=tensors), spec, Reason.UNKNOWN_TENSOR)


def test_messages_stay_short_when_names_are_huge(spec: BaseModelSpec, good: Files) -> None:
    huge = "base_model.model." + "x" * 300_000 + ".lora_A.weight"
    detail = refuse(
        rebuild(good, tensors={**state_dict(good), huge: torch.zeros(4)}), spec, Reason.UNKNOWN_TARGET_MODULE
    )
    assert "xxx..." in detail and len(detail) < 400


def test_duplicate_and_missing_tensors(spec: BaseModelSpec, good: Files) -> None:
    tensors = state_dict(good)
    tensors[f"{Q0}.lora_A.default.weight"] = tensors[f"{Q0}.lora_A.weight"].clone()
    refuse(rebuild(good, tensors=tensors), spec, Reason.DUPLICATE_TENSOR)
    tensors = state_dict(good)
    del tensors[f"{Q0}.lora_B.weight"]
    assert "q_proj.lora_B" in refuse(rebuild(good, tensors=tensors), spec, Reason.MISSING_TENSOR)
    tensors = {k: v for k, v in state_dict(good).items() if ".layers.1." not in k}  # a whole layer left out
    refuse(rebuild(good, tensors=tensors), spec, Reason.MISSING_TENSOR)


def test_dora_config(spec: BaseModelSpec, good: Files) -> None:
    assert "DoRA" in refuse(with_config(good, use_dora=True), spec, Reason.UNSUPPORTED)


def test_truncated_files(spec: BaseModelSpec, good: Files) -> None:
    weights = good[WEIGHTS_FILE]
    refuse({**good, WEIGHTS_FILE: weights[: len(weights) // 2]}, spec, Reason.OFFSET_OUT_OF_BOUNDS)
    refuse({**good, WEIGHTS_FILE: weights[:100]}, spec, Reason.TRUNCATED)
    refuse({**good, WEIGHTS_FILE: weights[:5]}, spec, Reason.TRUNCATED)
    refuse({**good, CONFIG_FILE: good[CONFIG_FILE][:-10]}, spec, Reason.BAD_CONFIG)


def test_header_not_json(spec: BaseModelSpec, good: Files) -> None:
    body = b"{this is not json}"
    refuse({**good, WEIGHTS_FILE: struct.pack("<Q", len(body)) + body}, spec, Reason.BAD_HEADER)


def test_ten_gigabyte_claim(spec: BaseModelSpec, good: Files) -> None:
    def claim(header: dict[str, Any]) -> None:
        header[f"{Q0}.lora_A.weight"] = {
            "dtype": "F32",
            "shape": [4, 625_000_000],
            "data_offsets": [0, 10**10],
        }

    assert "10,000,000,000" in refuse(with_header(good, claim), spec, Reason.FILE_TOO_LARGE)


def test_extra_bytes_in_the_data_section(spec: BaseModelSpec, good: Files) -> None:
    refuse({**good, WEIGHTS_FILE: good[WEIGHTS_FILE] + b"\0" * 64}, spec, Reason.DATA_GAP)


def test_file_set(spec: BaseModelSpec, good: Files) -> None:
    refuse({CONFIG_FILE: good[CONFIG_FILE]}, spec, Reason.MISSING_FILE)
    refuse({WEIGHTS_FILE: good[WEIGHTS_FILE]}, spec, Reason.MISSING_FILE)
    refuse({**good, "model.safetensors": good[WEIGHTS_FILE]}, spec, Reason.UNEXPECTED_FILE)
    refuse({**good, "../adapter_config.json": b"{}"}, spec, Reason.UNEXPECTED_FILE)


def test_folder_checks_sizes_and_links_before_reading(
    spec: BaseModelSpec, adapter_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(AdapterRejected) as info:
        validate_adapter_dir(adapter_dir, spec, ValidationLimits(max_file_bytes=1024))
    assert info.value.reason == Reason.FILE_TOO_LARGE
    (tmp_path / CONFIG_FILE).write_bytes((adapter_dir / CONFIG_FILE).read_bytes())
    (tmp_path / WEIGHTS_FILE).symlink_to(adapter_dir / WEIGHTS_FILE)
    with pytest.raises(AdapterRejected) as info:
        validate_adapter_dir(tmp_path, spec)
    assert info.value.reason == Reason.UNEXPECTED_FILE
    with pytest.raises(AdapterRejected) as info:
        validate_adapter_dir(tmp_path / "nope", spec)
    assert info.value.reason == Reason.MISSING_FILE


# ---- fuzz --------------------------------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random, header_end: int) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(6)
    # bias toward the header: that is where parsing can go wrong; data bytes only change values
    pos = rng.randrange(header_end) if rng.random() < 0.7 else rng.randrange(len(buf))
    if kind == 0:
        buf[pos] ^= 1 << rng.randrange(8)
    elif kind == 1:
        buf[pos] = rng.randrange(256)
    elif kind == 2:
        del buf[pos:]
    elif kind == 3:
        buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
    elif kind == 4:
        del buf[pos : pos + rng.randrange(1, 9)]
    else:  # swap a digit inside the header for another digit: shapes and offsets
        digits = [i for i in range(8, header_end) if chr(buf[i]).isdigit()]
        buf[rng.choice(digits)] = ord(rng.choice("0123456789"))
    return bytes(buf)


def test_random_mutations_only_ever_raise_adapter_rejected(spec: BaseModelSpec, good: Files) -> None:
    rng = random.Random(1234)
    weights = good[WEIGHTS_FILE]
    header_end = 8 + struct.unpack_from("<Q", weights)[0]
    outcomes: dict[str, int] = {}
    for _ in range(400):
        files = dict(good)
        if rng.random() < 0.85:
            files[WEIGHTS_FILE] = mutate(weights, rng, header_end)
        else:
            files[CONFIG_FILE] = mutate(good[CONFIG_FILE], rng, len(good[CONFIG_FILE]))
        try:
            validate_adapter_files(files, spec)
            outcome = "ok"
        except AdapterRejected as e:
            outcome = e.reason.value
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    # both outcomes happen, several kinds of rejection are reached, and our header checks are at least as
    # strict as the safetensors loader: it never had to refuse something we let through
    assert outcomes.get("ok", 0) > 10, outcomes
    assert len(outcomes) > 6, outcomes
    assert Reason.BAD_SAFETENSORS.value not in outcomes, outcomes
