"""adapter_config.json read as data against a schema: the subset of PEFT's LoraConfig this node serves.

Keys PEFT adds that do not change inference (dropout, init, task_type, versions...) are ignored; keys that
would change the math are either handled (layers_to_transform, exclude_modules, use_rslora) or refused
with reason `unsupported` while set to a non-default value.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from inference.validate.errors import AdapterRejected, Reason, brief
from inference.validate.limits import DEFAULT_LIMITS, ValidationLimits
from inference.validate.strict_json import StrictJsonError, loads_object

CONFIG_FILE = "adapter_config.json"

# key -> (values that mean "feature off", what to tell the publisher)
_OFF_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_dora": ((None, False), "DoRA adapters are not supported: retrain with use_dora=False"),
    "fan_in_fan_out": ((None, False), "fan_in_fan_out (GPT-2 Conv1D layout) is not supported"),
    "bias": ((None, "none"), "LoRA bias terms are not supported: use bias='none'"),
    "lora_bias": ((None, False), "lora_bias is not supported"),
    "modules_to_save": ((None, []), "modules_to_save (full copies of base modules) is not supported"),
    "rank_pattern": ((None, {}), "rank_pattern (per-module ranks) is not supported: use one rank r"),
    "alpha_pattern": ((None, {}), "alpha_pattern (per-module alphas) is not supported: use one lora_alpha"),
    "layer_replication": ((None, []), "layer_replication is not supported"),
    "target_parameters": ((None, []), "target_parameters (LoRA on parameters) is not supported"),
    "trainable_token_indices": ((None, [], {}), "trainable_token_indices is not supported"),
    "use_qalora": ((None, False), "QA-LoRA is not supported"),
    "alora_invocation_tokens": ((None, []), "activated LoRA (alora_invocation_tokens) is not supported"),
    "use_bdlora": ((None, False, {}), "BD-LoRA is not supported"),
    "megatron_config": ((None, {}), "Megatron-parallel LoRA layers are not supported"),
    "arrow_config": ((None, {}), "Arrow routing is not supported"),
}
_PATTERN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoraAdapterConfig:
    rank: int
    alpha: float
    target_modules: tuple[str, ...]  # sorted short names, e.g. ("q_proj", "v_proj")
    use_rslora: bool = False
    layers_to_transform: tuple[int, ...] | None = None  # None = every layer
    layers_pattern: tuple[str, ...] = ()  # ModuleList names that hold the layers; () = PEFT's default rule
    exclude_modules: tuple[str, ...] = ()  # short names or full paths, matched like PEFT does
    base_model_name_or_path: str | None = None

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    def as_peft_dict(self) -> dict[str, Any]:
        """The keys `adapter_weights_from_state_dict` reads, with every default made explicit."""
        return {
            "r": self.rank,
            "lora_alpha": self.alpha,
            "use_rslora": self.use_rslora,
            "target_modules": list(self.target_modules),
        }

    def layer_index(self, module_path: str) -> int | None:
        """The layer number PEFT's layers_to_transform compares against, or None if the path has none."""
        if self.layers_pattern:
            for name in self.layers_pattern:
                m = re.match(rf"(?:^|.*?\.){name}\.(\d+)\.", module_path)
                if m:
                    return int(m.group(1))
            return None
        m = re.match(r".*?\.[^.]*\.(\d+)\.", module_path)  # PEFT's rule: the first numbered segment
        return int(m.group(1)) if m else None

    def targets(self, module_path: str) -> bool:
        """Whether PEFT would put a LoRA layer on `module_path` with this config."""
        short = module_path.rsplit(".", 1)[-1]
        if short not in self.target_modules:
            return False
        if any(module_path == ex or module_path.endswith("." + ex) for ex in self.exclude_modules):
            return False
        if self.layers_to_transform is not None:
            return self.layer_index(module_path) in self.layers_to_transform
        return True


def _bad(message: str) -> AdapterRejected:
    return AdapterRejected(Reason.BAD_CONFIG, f"{CONFIG_FILE}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_adapter_config(data: bytes, *, limits: ValidationLimits = DEFAULT_LIMITS) -> LoraAdapterConfig:
    """Parse and check adapter_config.json. Raises AdapterRejected (bad_config, unsupported,
    rank_too_large, unknown_target_module, file_too_large)."""
    if len(data) > limits.max_config_bytes:
        raise AdapterRejected(
            Reason.FILE_TOO_LARGE,
            f"{CONFIG_FILE} is {len(data):,} bytes; the limit is {limits.max_config_bytes:,}",
        )
    try:
        obj = loads_object(bytes(data))
    except StrictJsonError as e:
        raise _bad(str(e)) from None

    peft_type = obj.get("peft_type")
    if not isinstance(peft_type, str):
        raise _bad(f"peft_type must be the string 'LORA', got {brief(peft_type)}")
    if peft_type != "LORA":
        raise AdapterRejected(
            Reason.UNSUPPORTED, f"{CONFIG_FILE}: peft_type {brief(peft_type, 40)}: only LORA is served"
        )

    rank = obj.get("r")
    if not _is_int(rank) or rank < 1:
        raise _bad(f"r must be a positive integer, got {brief(rank)}")
    if rank > limits.max_rank:
        raise AdapterRejected(
            Reason.RANK_TOO_LARGE,
            f"{CONFIG_FILE}: r = {rank:,}; this node accepts ranks up to {limits.max_rank}",
        )

    alpha = obj.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha <= limits.max_alpha:
        raise _bad(f"lora_alpha must be a number in (0, {limits.max_alpha:g}], got {brief(alpha)}")

    use_rslora = obj.get("use_rslora", False)
    if use_rslora is None:
        use_rslora = False
    if not isinstance(use_rslora, bool):
        raise _bad(f"use_rslora must be true or false, got {brief(use_rslora)}")

    for key, (off_values, why) in _OFF_ONLY.items():
        if key not in obj:
            continue
        value = obj[key]
        if type(value) not in {type(off) for off in off_values}:
            expected = " or ".join(sorted({json.dumps(off) for off in off_values}))
            raise _bad(f"{key} must be {expected} here, got {brief(value)}")
        if not any(_same(value, off) for off in off_values):
            raise AdapterRejected(Reason.UNSUPPORTED, f"{CONFIG_FILE}: {key} = {brief(value)}: {why}")

    base_name = obj.get("base_model_name_or_path")
    if base_name is not None and not isinstance(base_name, str):
        raise _bad(f"base_model_name_or_path must be a string or null, got {brief(base_name)}")

    return LoraAdapterConfig(
        rank=rank,
        alpha=float(alpha),
        target_modules=_target_modules(obj.get("target_modules"), limits),
        use_rslora=use_rslora,
        layers_to_transform=_layers_to_transform(obj.get("layers_to_transform")),
        layers_pattern=_layers_pattern(obj.get("layers_pattern")),
        exclude_modules=_exclude_modules(obj.get("exclude_modules")),
        base_model_name_or_path=base_name,
    )


def _same(value: Any, off: Any) -> bool:
    # `False == 0` and `0 == False` in Python: compare types too, so use_dora=0 is not read as "off".
    return type(value) is type(off) and value == off


def _target_modules(value: Any, limits: ValidationLimits) -> tuple[str, ...]:
    allowed = ", ".join(sorted(limits.allowed_targets))
    if isinstance(value, str):
        # PEFT reads a string as a regex over full module paths; only a plain allowed name is accepted.
        if value not in limits.allowed_targets:
            raise AdapterRejected(
                Reason.UNKNOWN_TARGET_MODULE,
                f"{CONFIG_FILE}: target_modules {brief(value)} is a pattern or unknown name; "
                f"list short names from: {allowed}",
            )
        return (value,)
    if not isinstance(value, list) or not value:
        raise _bad(f"target_modules must be a non-empty list of module names, got {brief(value)}")
    if not all(isinstance(v, str) for v in value):
        raise _bad(f"target_modules must contain strings only, got {brief(value)}")
    unknown = sorted(set(value) - limits.allowed_targets)
    if unknown:
        raise AdapterRejected(
            Reason.UNKNOWN_TARGET_MODULE,
            f"{CONFIG_FILE}: target_modules {brief(unknown)} not allowed; allowed: {allowed}",
        )
    return tuple(sorted(set(value)))


def _layers_to_transform(value: Any) -> tuple[int, ...] | None:
    if value is None or value == []:  # PEFT treats an empty list as "every layer"
        return None
    if _is_int(value) and value >= 0:
        return (value,)
    if isinstance(value, list) and all(_is_int(v) and v >= 0 for v in value):
        return tuple(sorted(set(value)))
    raise _bad(f"layers_to_transform must be null, a layer number or a list of them, got {brief(value)}")


def _layers_pattern(value: Any) -> tuple[str, ...]:
    if value is None or value == []:
        return ()
    names = [value] if isinstance(value, str) else value
    if isinstance(names, list) and all(isinstance(n, str) and _PATTERN_NAME.match(n) for n in names):
        return tuple(names)
    raise _bad(f"layers_pattern must be null or module-list names like 'layers', got {brief(value)}")


def _exclude_modules(value: Any) -> tuple[str, ...]:
    if value is None or value == []:
        return ()
    if isinstance(value, str):
        raise AdapterRejected(
            Reason.UNSUPPORTED,
            f"{CONFIG_FILE}: exclude_modules as a regex string is not supported; use a list",
        )
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise _bad(f"exclude_modules must be null or a list of module names, got {brief(value)}")
