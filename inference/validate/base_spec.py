"""What an adapter may touch: the base model's linear modules and their shapes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

LM_HEAD = "lm_head"


@dataclass(frozen=True)
class BaseModelSpec:
    name: str
    modules: Mapping[str, tuple[int, int]] = field(hash=False)  # full path -> (in_features, out_features)

    @classmethod
    def from_model(
        cls, model: nn.Module, name: str | None = None, *, include_lm_head: bool = False
    ) -> BaseModelSpec:
        """Every nn.Linear of a transformers causal LM, keyed by the path PEFT uses after
        'base_model.model.' (e.g. 'model.layers.0.self_attn.q_proj'). `name` defaults to the model's
        config name_or_path."""
        if name is None:
            name = str(getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__)
        modules = {
            path: (m.in_features, m.out_features)
            for path, m in model.named_modules()
            if isinstance(m, nn.Linear) and (include_lm_head or path.rsplit(".", 1)[-1] != LM_HEAD)
        }
        if not modules:
            raise ValueError(f"base model {name!r} has no nn.Linear modules an adapter could target")
        return cls(name=name, modules=modules)

    def short_names(self) -> frozenset[str]:
        return frozenset(path.rsplit(".", 1)[-1] for path in self.modules)
