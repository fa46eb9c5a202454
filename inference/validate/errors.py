"""The one exception validation raises, with a stable reason code for metrics, logs and quarantine."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an adapter was refused. Values are stable: they appear in metrics, logs and the quarantine."""

    # files
    MISSING_FILE = "missing_file"
    UNEXPECTED_FILE = "unexpected_file"
    PICKLE = "pickle"
    FILE_TOO_LARGE = "file_too_large"
    # safetensors container
    TRUNCATED = "truncated"
    HEADER_TOO_LARGE = "header_too_large"
    BAD_HEADER = "bad_header"
    BAD_DTYPE = "bad_dtype"
    TOO_MANY_TENSORS = "too_many_tensors"
    SIZE_MISMATCH = "size_mismatch"
    OFFSET_OUT_OF_BOUNDS = "offset_out_of_bounds"
    OVERLAPPING_OFFSETS = "overlapping_offsets"
    DATA_GAP = "data_gap"
    BAD_SAFETENSORS = "bad_safetensors"
    # adapter_config.json
    BAD_CONFIG = "bad_config"
    UNSUPPORTED = "unsupported"
    RANK_TOO_LARGE = "rank_too_large"
    # tensors against the config and the base model
    UNKNOWN_TARGET_MODULE = "unknown_target_module"
    UNKNOWN_TENSOR = "unknown_tensor"
    DUPLICATE_TENSOR = "duplicate_tensor"
    MISSING_TENSOR = "missing_tensor"
    SHAPE_MISMATCH = "shape_mismatch"
    RANK_MISMATCH = "rank_mismatch"
    # values
    NON_FINITE = "non_finite"
    NORM_TOO_LARGE = "norm_too_large"


def brief(value: object, limit: int = 120) -> str:
    """repr() cut to a length fit for a log line: names and values in messages come from the attacker."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AdapterRejected(Exception):
    """An untrusted adapter failed validation. `reason` is a stable code; the message says what was
    found, what was expected, and what the publisher has to change."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.detail = message
