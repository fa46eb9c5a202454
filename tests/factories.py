"""Builders for test inputs: random PEFT adapters on the tiny model. Real PEFT, real safetensors."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from inference.models import LoadedModel

DEFAULT_TARGETS = ("q_proj", "v_proj")


def make_peft_adapter(
    base: LoadedModel,
    out_dir: Path,
    *,
    rank: int = 4,
    alpha: int = 8,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 1,
    scale: float = 0.5,
) -> Path:
    """Write a standard PEFT adapter folder (adapter_config.json + adapter_model.safetensors)
    with random A and B (B non-zero, so the adapter changes the output)."""
    model = copy.deepcopy(base.model)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, lora_dropout=0.0
    )
    peft_model = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir), safe_serialization=True)
    return out_dir
