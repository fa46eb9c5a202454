"""The safetensors container parser and the adapter_config.json schema, on hand-built bytes."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig
from safetensors.torch import save as save_safetensors

from inference.validate import (
    AdapterRejected,
    Reason,
    ValidationLimits,
    parse_adapter_config,
    parse_safetensors_header,
)


def raw_safetensors(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    """A safetensors file from a header we write ourselves (so it can lie) and a data section."""
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def rejected(reason: Reason, data: bytes, limits: ValidationLimits | None = None) -> AdapterRejected:
    with pytest.raises(AdapterRejected) as info:
        parse_safetensors_header(data, limits=limits or ValidationLimits())
    assert info.value.reason == reason, str(info.value)
    return info.value


# ---- the container ----------------------------------------------------------------------------------


def test_real_safetensors_file_is_parsed_without_reading_tensors() -> None:
    tensors = {"a": torch.ones(4, 8), "b": torch.zeros(3, dtype=torch.float16)}
    data = save_safetensors(tensors, metadata={"format": "pt"})
    header = parse_safetensors_header(memoryview(data))
    assert header.metadata == {"format": "pt"}
    assert set(header.tensors) == {"a", "b"}
    a = header.tensors["a"]
    assert (a.dtype, a.shape, a.nbytes) == ("F32", (4, 8), 128)
    assert header.gaps == () and header.unused_bytes == 0
    assert header.data_start + header.data_size == len(data)


def test_gaps_are_reported_not_refused() -> None:
    data = raw_safetensors({"t": entry("F32", [2], 8, 16)}, bytes(32))
    header = parse_safetensors_header(data)
    assert header.gaps == ((0, 8), (16, 32))
    assert header.unused_bytes == 24


def test_header_claiming_100_mb_is_refused_before_reading_it() -> None:
    data = struct.pack("<Q", 100 * 1024 * 1024) + b"{}"
    err = rejected(Reason.HEADER_TOO_LARGE, data)
    assert "104,857,600" in str(err)


@pytest.mark.parametrize("data", [b"", b"\x01\x00", struct.pack("<Q", 64) + b'{"a": 1}'])
def test_file_shorter_than_its_header_is_truncated(data: bytes) -> None:
    rejected(Reason.TRUNCATED, data)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json at all", "does not start"),
        (b"[1, 2, 3]", "does not start"),
        (b"  {}", "does not start"),
        (b'{"a": ', "not JSON"),
        (b'{"a": NaN}', "NaN"),
        (b'{"\xff": 1}', "not UTF-8"),
        (b'{"t": 1, "t": 2}', "duplicate"),
        (b'{"t": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested"),
        (b'{"\\ud800": {}}', "not UTF-8"),
    ],
)
def test_header_that_is_not_a_json_object_is_refused(body: bytes, why: str) -> None:
    # py_ecc (eth-account) raises the recursion limit to 100,000 in the node process; json.loads then
    # overflows the C stack on deep nesting instead of raising RecursionError. Parse under that limit.
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, 100_000))
    try:
        assert why in str(rejected(Reason.BAD_HEADER, raw_safetensors(body)))
    finally:
        sys.setrecursionlimit(old_limit)


def test_offsets_past_the_end_are_refused() -> None:
    data = raw_safetensors({"t": entry("F32", [4], 16, 32)}, bytes(16))
    err = rejected(Reason.OFFSET_OUT_OF_BOUNDS, data)
    assert "'t'" in str(err) and "16 bytes" in str(err)


def test_overlapping_offsets_are_refused() -> None:
    header = {"a": entry("F32", [4], 0, 16), "b": entry("F32", [4], 8, 24)}
    err = rejected(Reason.OVERLAPPING_OFFSETS, raw_safetensors(header, bytes(24)))
    assert "'a'" in str(err) and "'b'" in str(err)


@pytest.mark.parametrize("dtype", ["I64", "F64", "U8", "F8_E4M3", "BOOL", "NOPE"])
def test_dtypes_outside_the_allowed_set_are_refused(dtype: str) -> None:
    err = rejected(Reason.BAD_DTYPE, raw_safetensors({"t": entry(dtype, [1], 0, 8)}, bytes(8)))
    assert "F32" in str(err)


def test_allowed_dtypes_are_configurable() -> None:
    data = raw_safetensors({"t": entry("F64", [1], 0, 8)}, bytes(8))
    header = parse_safetensors_header(data, limits=ValidationLimits(allowed_dtypes={"F32", "F64"}))
    assert header.tensors["t"].dtype == "F64"


def test_size_must_match_shape_and_dtype() -> None:
    rejected(Reason.SIZE_MISMATCH, raw_safetensors({"t": entry("F16", [4], 0, 16)}, bytes(16)))


def test_ten_gigabyte_claim_is_refused_without_allocating() -> None:
    ten_gb = 10 * 1000**3
    header = {"t": entry("F32", [ten_gb // 4], 0, ten_gb)}
    err = rejected(Reason.FILE_TOO_LARGE, raw_safetensors(header, bytes(64)))
    assert "10,000,000,000" in str(err)


def test_too_many_tensors() -> None:
    header = {f"t{i}": entry("F32", [1], 4 * i, 4 * i + 4) for i in range(3)}
    rejected(Reason.TOO_MANY_TENSORS, raw_safetensors(header, bytes(12)), ValidationLimits(max_tensors=2))


def test_whole_file_size_limit() -> None:
    data = raw_safetensors({"t": entry("F32", [64], 0, 256)}, bytes(256))
    rejected(Reason.FILE_TOO_LARGE, data, ValidationLimits(max_file_bytes=100))


@pytest.mark.parametrize(
    "bad",
    [
        {"dtype": "F32", "shape": [1]},  # no data_offsets
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1},
        {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1] * 9, "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]},
        {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]},
        {"dtype": 32, "shape": [1], "data_offsets": [0, 4]},
        [1, 2],
    ],
)
def test_malformed_tensor_entries_are_refused(bad: Any) -> None:
    rejected(Reason.BAD_HEADER, raw_safetensors({"t": bad}, bytes(4)))


@pytest.mark.parametrize("metadata", [{"format": 1}, ["pt"], None, "pt"])
def test_metadata_must_map_strings_to_strings(metadata: Any) -> None:
    rejected(Reason.BAD_HEADER, raw_safetensors({"__metadata__": metadata}))


# ---- adapter_config.json ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A config written by PEFT itself, with all the keys PEFT adds."""
    out = tmp_path_factory.mktemp("cfg")
    LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]).save_pretrained(str(out))
    return json.loads((Path(out) / "adapter_config.json").read_text())


def config_bytes(base: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({**base, **changes}).encode()


def config_rejected(reason: Reason, data: bytes, limits: ValidationLimits | None = None) -> str:
    with pytest.raises(AdapterRejected) as info:
        parse_adapter_config(data, limits=limits or ValidationLimits())
    assert info.value.reason == reason, str(info.value)
    return str(info.value)


def test_peft_written_config_parses(peft_config: dict[str, Any]) -> None:
    config = parse_adapter_config(config_bytes(peft_config))
    assert (config.rank, config.alpha, config.use_rslora) == (8, 16.0, False)
    assert config.target_modules == ("q_proj", "v_proj")
    assert config.scale == 2.0
    assert config.as_peft_dict() == {
        "r": 8,
        "lora_alpha": 16.0,
        "use_rslora": False,
        "target_modules": ["q_proj", "v_proj"],
    }


def test_rslora_scale(peft_config: dict[str, Any]) -> None:
    config = parse_adapter_config(config_bytes(peft_config, use_rslora=True, r=16, lora_alpha=8))
    assert config.scale == pytest.approx(2.0)


def test_unknown_keys_are_ignored_and_a_plain_target_string_is_accepted(peft_config: dict[str, Any]) -> None:
    config = parse_adapter_config(
        config_bytes(peft_config, target_modules="q_proj", some_future_key={"x": 1})
    )
    assert config.target_modules == ("q_proj",)


@pytest.mark.parametrize(
    "targets", [["q_proj", "wte"], ["lm_head"], ".*q_proj", "all-linear", ["model.layers.0.self_attn.q_proj"]]
)
def test_unknown_or_pattern_target_modules_are_refused(peft_config: dict[str, Any], targets: Any) -> None:
    message = config_rejected(Reason.UNKNOWN_TARGET_MODULE, config_bytes(peft_config, target_modules=targets))
    assert "q_proj" in message  # tells the publisher which names are allowed


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("use_dora", True),
        ("fan_in_fan_out", True),
        ("bias", "all"),
        ("lora_bias", True),
        ("modules_to_save", ["lm_head"]),
        ("rank_pattern", {"q_proj": 16}),
        ("alpha_pattern", {"q_proj": 16}),
        ("layer_replication", [[0, 1]]),
        ("peft_type", "IA3"),
        ("exclude_modules", ".*k_proj"),
    ],
)
def test_unsupported_features_are_refused_with_the_key_named(
    peft_config: dict[str, Any], key: str, value: Any
) -> None:
    message = config_rejected(Reason.UNSUPPORTED, config_bytes(peft_config, **{key: value}))
    assert key in message or "IA3" in message


def test_dora_reason_tells_the_publisher_what_to_do(peft_config: dict[str, Any]) -> None:
    assert "DoRA" in config_rejected(Reason.UNSUPPORTED, config_bytes(peft_config, use_dora=True))


def test_rank_4096_is_refused(peft_config: dict[str, Any]) -> None:
    message = config_rejected(Reason.RANK_TOO_LARGE, config_bytes(peft_config, r=4096))
    assert "4,096" in message and "256" in message


@pytest.mark.parametrize(
    "changes",
    [
        {"r": 0},
        {"r": "8"},
        {"r": True},
        {"r": 8.0},
        {"lora_alpha": -1},
        {"lora_alpha": 0},
        {"lora_alpha": 1e9},
        {"lora_alpha": "16"},
        {"use_rslora": "yes"},
        {"use_dora": "no"},
        {"use_dora": 1},
        {"bias": False},
        {"modules_to_save": "lm_head"},
        {"target_modules": []},
        {"target_modules": [1]},
        {"target_modules": None},
        {"layers_to_transform": [-1]},
        {"layers_to_transform": "0"},
        {"layers_pattern": "layers.*"},
        {"exclude_modules": [3]},
        {"base_model_name_or_path": 7},
        {"peft_type": None},
    ],
)
def test_known_keys_are_type_checked(peft_config: dict[str, Any], changes: dict[str, Any]) -> None:
    config_rejected(Reason.BAD_CONFIG, config_bytes(peft_config, **changes))


@pytest.mark.parametrize("data", [b"", b"[]", b"{", b'{"r": 1, "r": 2}', b"\xff\xfe", b'{"r": Infinity}'])
def test_config_that_is_not_a_json_object_is_refused(data: bytes) -> None:
    config_rejected(Reason.BAD_CONFIG, data)


def test_oversized_config_is_refused_before_parsing(peft_config: dict[str, Any]) -> None:
    data = config_bytes(peft_config, padding="x" * 70_000)
    config_rejected(Reason.FILE_TOO_LARGE, data)


def test_layer_selection_follows_peft_rules(peft_config: dict[str, Any]) -> None:
    config = parse_adapter_config(
        config_bytes(
            peft_config, layers_to_transform=[1], exclude_modules=["model.layers.1.self_attn.v_proj"]
        )
    )
    assert config.layer_index("model.layers.3.mlp.experts.7.up_proj") == 3  # the first number, like PEFT
    assert not config.targets("model.layers.0.self_attn.q_proj")  # layer 0 not transformed
    assert config.targets("model.layers.1.self_attn.q_proj")
    assert not config.targets("model.layers.1.self_attn.v_proj")  # excluded
    assert not config.targets("model.layers.1.self_attn.k_proj")  # not a target
    patterned = parse_adapter_config(config_bytes(peft_config, layers_to_transform=0, layers_pattern="h"))
    assert patterned.layer_index("transformer.h.0.attn.q_proj") == 0
    assert patterned.layer_index("model.layers.0.self_attn.q_proj") is None


# ---- limits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_rank": 0},
        {"max_file_bytes": -1},
        {"max_tensors": True},
        {"max_alpha": float("inf")},
        {"max_abs_value": 0},
        {"allowed_dtypes": {"I64"}},
        {"allowed_dtypes": set()},
        {"allowed_targets": {"q_proj", ".*"}},
    ],
)
def test_bad_limits_are_refused_at_start(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ValidationLimits(**kwargs)


def test_limits_from_a_config_section() -> None:
    limits = ValidationLimits.from_mapping({"max_rank": 64, "allowed_dtypes": ["F16", "BF16"]})
    assert limits.max_rank == 64 and limits.allowed_dtypes == frozenset({"F16", "BF16"})
    with pytest.raises(ValueError, match="max_rnak"):
        ValidationLimits.from_mapping({"max_rnak": 64})
    with pytest.raises(ValueError, match="allowed_targets"):
        ValidationLimits.from_mapping({"allowed_targets": "q_proj"})
