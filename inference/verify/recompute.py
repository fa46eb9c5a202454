"""One prefill over prompt + output under an adapter, independent of the engine: the base model's own
(transformers) forward, with each adapted projection's LoRA delta added by a forward hook, so a verifier
holds one base model for every adapter and loads nothing per job but the adapter's A and B."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from inference.adapter import AdapterWeights, adapter_weights_from_state_dict
from inference.engine.lora_layer import MultiLoraLinear
from inference.models import LoadedModel
from inference.validate.strict_json import loads_object

_LOCK = threading.Lock()  # hooks are added to a shared model: one recompute at a time


@dataclass(frozen=True)
class Recomputed:
    hidden: torch.Tensor  # [L, H] bfloat16: final normalized hidden state at every position
    logits: torch.Tensor  # [L, vocab] float32


def load_peft_weights(folder: Path) -> AdapterWeights:
    """A PEFT folder already validated (inference.validate.validate_adapter_dir returns the same type for
    untrusted ones) -> AdapterWeights."""
    folder = Path(folder)
    config = loads_object((folder / "adapter_config.json").read_bytes())
    return adapter_weights_from_state_dict(config, load_file(str(folder / "adapter_model.safetensors")))


def _check_unwrapped(model: nn.Module) -> None:
    if any(isinstance(m, MultiLoraLinear) for m in model.modules()):
        raise ValueError(
            "this base model is owned by an Engine (its projections are wrapped): load a separate copy for "
            "verification, e.g. inference.models.load_base_model(name)"
        )


def _lora_hook(a: torch.Tensor, b: torch.Tensor, scale: float) -> Callable[..., torch.Tensor]:
    def hook(_module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        return out + ((args[0] @ a.t()) @ b.t()) * scale

    return hook


@torch.inference_mode()
def recompute(base: LoadedModel, weights: AdapterWeights | None, token_ids: list[int]) -> Recomputed:
    """Hidden states and logits at every position of `token_ids` under `weights` (None: the bare base
    model), in one forward pass."""
    model = base.model
    _check_unwrapped(model)
    if not token_ids:
        raise ValueError("nothing to recompute: no token ids")
    param = next(model.parameters())
    handles = []
    with _LOCK:
        try:
            if weights is not None:
                for path, pair in weights.layers.items():
                    try:
                        module = model.get_submodule(path)
                    except AttributeError:
                        raise ValueError(
                            f"adapter targets {path!r}, which this base model does not have: "
                            "it was made for another base model"
                        ) from None
                    a = pair.a.to(device=param.device, dtype=param.dtype)
                    b = pair.b.to(device=param.device, dtype=param.dtype)
                    handles.append(module.register_forward_hook(_lora_hook(a, b, weights.scale)))
            ids = torch.tensor([token_ids], dtype=torch.long, device=param.device)
            hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state[0]
            logits = model.lm_head(hidden)
        finally:
            for h in handles:
                h.remove()
    return Recomputed(hidden.to(torch.bfloat16).cpu(), logits.float().cpu())
