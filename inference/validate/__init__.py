"""Validation of untrusted LoRA adapters: nothing from the network reaches the model before it passes.

Entry points: `validate_adapter_files(files, base, limits)` / `validate_adapter_dir(path, base, limits)`
return `AdapterWeights` or raise `AdapterRejected` (with a stable `.reason`). See docs/validation.md.
"""

from inference.validate.adapter_config import CONFIG_FILE, LoraAdapterConfig, parse_adapter_config
from inference.validate.adapter_files import (
    WEIGHTS_FILE,
    looks_like_pickle,
    validate_adapter_dir,
    validate_adapter_files,
)
from inference.validate.base_spec import BaseModelSpec
from inference.validate.errors import AdapterRejected, Reason
from inference.validate.limits import DEFAULT_LIMITS, DEFAULT_TARGETS, ValidationLimits
from inference.validate.safetensors_header import SafetensorsHeader, TensorEntry, parse_safetensors_header

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_LIMITS",
    "DEFAULT_TARGETS",
    "WEIGHTS_FILE",
    "AdapterRejected",
    "BaseModelSpec",
    "LoraAdapterConfig",
    "Reason",
    "SafetensorsHeader",
    "TensorEntry",
    "ValidationLimits",
    "looks_like_pickle",
    "parse_adapter_config",
    "parse_safetensors_header",
    "validate_adapter_dir",
    "validate_adapter_files",
]
