"""Validated adapter weights written back out as a standard PEFT folder, for backends that load adapters
from disk (vLLM). The bytes written are the ones validation produced, never the untrusted upload."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from inference.adapter import AdapterWeights

PEFT_PREFIX = "base_model.model."


def write_peft_folder(weights: AdapterWeights, folder: Path, *, base_model: str = "") -> Path:
    """`folder`/adapter_config.json + adapter_model.safetensors, written to a temp folder and renamed into
    place (a reader never sees half an adapter). Returns `folder`."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    tensors = {}
    for path, pair in weights.layers.items():
        tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = pair.a.detach().contiguous().cpu()
        tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = pair.b.detach().contiguous().cpu()
    save_file(tensors, str(tmp / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": weights.rank,
        "lora_alpha": weights.alpha,
        "use_rslora": weights.use_rslora,
        "target_modules": sorted(weights.target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "inference_mode": True,
    }
    (tmp / "adapter_config.json").write_text(json.dumps(config, indent=1))
    if folder.exists():  # a directory rename cannot overwrite a non-empty one: move the old aside
        old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-old-"))
        os.replace(folder, old / folder.name)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, folder)
    return folder
