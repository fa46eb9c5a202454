"""What a node accepts from an untrusted adapter. Every limit is a plain field an operator can set."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Bytes per element of the safetensors dtypes a node may allow: floats only, LoRA weights are never integers.
DTYPE_ITEMSIZE: dict[str, int] = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}

DEFAULT_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})

MiB = 1024 * 1024


@dataclass(frozen=True)
class ValidationLimits:
    max_file_bytes: int = 512 * MiB  # adapter_model.safetensors
    max_config_bytes: int = 64 * 1024  # adapter_config.json
    max_header_bytes: int = 1 * MiB  # the safetensors JSON header
    max_tensors: int = 4096  # a 70B model with all 7 projections over 80 layers has 1,120
    allowed_dtypes: frozenset[str] = frozenset({"F32", "F16", "BF16"})
    max_rank: int = 256
    max_alpha: float = 1024.0
    max_abs_value: float = 1e3  # any single weight; trained LoRA weights are far below 1
    max_tensor_norm: float = 1e4  # Frobenius norm of one A or B matrix
    max_delta_norm: float = 1e4  # Frobenius norm of scale * B @ A, the weight change the adapter makes
    allowed_targets: frozenset[str] = field(default=DEFAULT_TARGETS)  # short module names

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_dtypes", frozenset(self.allowed_dtypes))
        object.__setattr__(self, "allowed_targets", frozenset(self.allowed_targets))
        for name in ("max_file_bytes", "max_config_bytes", "max_header_bytes", "max_tensors", "max_rank"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"validation limit {name} must be a positive integer, got {value!r}")
        for name in ("max_alpha", "max_abs_value", "max_tensor_norm", "max_delta_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"validation limit {name} must be a positive finite number, got {value!r}")
        unknown = self.allowed_dtypes - DTYPE_ITEMSIZE.keys()
        if unknown or not self.allowed_dtypes:
            raise ValueError(
                f"allowed_dtypes must be a non-empty subset of {sorted(DTYPE_ITEMSIZE)}, "
                f"got {sorted(self.allowed_dtypes)}"
            )
        if not self.allowed_targets or not all(
            isinstance(t, str) and t.isidentifier() for t in self.allowed_targets
        ):
            raise ValueError(
                "allowed_targets must be short module names like 'q_proj', "
                f"got {sorted(self.allowed_targets)}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> ValidationLimits:
        """Build from a config section (e.g. TOML `[validation]`); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown validation limit(s) {unknown}; known: {sorted(known)}")
        kwargs = dict(values)
        for name in ("allowed_dtypes", "allowed_targets"):
            if name in kwargs:
                kwargs[name] = _string_set(name, kwargs[name])
        return cls(**kwargs)  # type: ignore[arg-type]


def _string_set(name: str, value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"validation limit {name} must be a list of strings, got {value!r}")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"validation limit {name} must be a list of strings, got {value!r}")
    return frozenset(items)


DEFAULT_LIMITS = ValidationLimits()
