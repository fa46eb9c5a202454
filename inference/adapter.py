"""The in-memory form of a LoRA adapter, shared by validation (which produces it) and the engine
(which consumes it). One place maps PEFT's tensor names to base-model module paths."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

# base_model.model.<module path>.lora_A.weight  (optionally with an adapter name before .weight)
_PEFT_KEY = re.compile(
    r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$"
)


@dataclass(frozen=True)
class LoraPair:
    """One adapted linear layer: delta(x) = scale * (x @ a.T) @ b.T."""

    a: torch.Tensor  # [rank, in_features]
    b: torch.Tensor  # [out_features, rank]


@dataclass(frozen=True)
class AdapterWeights:
    rank: int
    alpha: float
    use_rslora: bool
    target_modules: tuple[str, ...]  # short names from the config, e.g. ("q_proj", "v_proj")
    layers: dict[str, LoraPair] = field(default_factory=dict)  # full module path -> pair

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.rank) if self.use_rslora else self.alpha / self.rank

    @property
    def nbytes(self) -> int:
        return sum(
            p.a.numel() * p.a.element_size() + p.b.numel() * p.b.element_size() for p in self.layers.values()
        )


def parse_peft_key(key: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight'
    -> ('model.layers.0.self_attn.q_proj', 'A'). Raises ValueError for any other key."""
    m = _PEFT_KEY.match(key)
    if not m:
        raise ValueError(f"not a PEFT LoRA tensor name: {key!r}")
    return m.group("module"), m.group("ab")


def adapter_weights_from_state_dict(config: dict, tensors: dict[str, torch.Tensor]) -> AdapterWeights:
    """Group PEFT tensors into per-module (A, B) pairs. Trusts its input: call validation first for
    anything that came from the network."""
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        module, ab = parse_peft_key(key)
        halves.setdefault(module, {})[ab] = t
    layers: dict[str, LoraPair] = {}
    for module, pair in halves.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"module {module!r} has lora_{'A' if 'A' not in pair else 'B'} missing")
        layers[module] = LoraPair(a=pair["A"], b=pair["B"])
    targets = config.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    return AdapterWeights(
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),  # PEFT's LoraConfig default, not r
        use_rslora=bool(config.get("use_rslora", False)),
        target_modules=tuple(sorted(targets)),
        layers=layers,
    )
