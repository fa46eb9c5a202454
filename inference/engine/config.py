"""Engine configuration: sizes fixed at start-up (the adapter page pool is allocated once from these)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ATTENTION = ("auto", "flash_attn", "sdpa", "sdpa_mask")


@dataclass
class EngineConfig:
    # Adapter pool size, in adapters of rank max_rank, when pool_budget_bytes is 0. The pool itself is
    # paged by rank rows (pages.py): it holds max_slots * max_rank rank rows of any mix of ranks.
    max_slots: int = 8
    max_rank: int = 64  # the widest adapter accepted; costs nothing unless such adapters are resident
    host_budget_bytes: int = 256 << 20  # host-memory tier of parsed adapters, LRU beyond this
    max_batch: int = 8  # rows decoded together in one step
    max_queue: int = 256  # waiting requests before generate() answers EngineBusy
    device: str = "cpu"
    # "auto": bfloat16 on a CUDA device that supports it, else float32; "bfloat16" / "float16" /
    # "float32" (or a torch.dtype); None keeps the base model's dtype. Adapters live in the same dtype.
    dtype: torch.dtype | str | None = "auto"
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    # torch intra-op threads, set process-wide when the engine is built; 0 leaves torch's setting. On small
    # CPU machines fewer threads can be faster: the decode loop runs in a worker thread (docs/engine.md).
    cpu_threads: int = 0
    record_hidden: bool = False  # every request returns its final hidden states (see GenerationRequest)
    # Batch-invariant greedy decoding: a request's tokens never depend on its batch mates (each row runs its
    # own forward pass with shapes fixed by that row alone); costs throughput (docs/verification.md).
    deterministic: bool = False
    # Device bytes for resident adapters (all wrapped layers together); 0: max_slots * max_rank rank rows.
    pool_budget_bytes: int = 0
    # Decode attention: "auto" (flash_attn on CUDA when flash-attn imports, else "sdpa" on CUDA and
    # "sdpa_mask" on CPU), "flash_attn", "sdpa" (mask-free: the length bias rides in an extra key
    # column), "sdpa_mask" (one boolean mask per step: fastest on CPU, rules out flash kernels on CUDA).
    attention: str = "auto"

    def __post_init__(self) -> None:
        for name in ("max_slots", "max_rank", "host_budget_bytes", "max_batch", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cpu_threads, int) or self.cpu_threads < 0:
            raise ValueError(
                f"EngineConfig.cpu_threads must be >= 0 (0: torch's default), got {self.cpu_threads!r}"
            )
        if not isinstance(self.pool_budget_bytes, int) or self.pool_budget_bytes < 0:
            raise ValueError(
                "EngineConfig.pool_budget_bytes must be >= 0 (0: max_slots * max_rank rank rows), "
                f"got {self.pool_budget_bytes!r}"
            )
        if not self.target_modules:
            raise ValueError(
                "EngineConfig.target_modules is empty: name the linear layers adapters may target"
            )
        if isinstance(self.dtype, str) and self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(
                f"EngineConfig.dtype {self.dtype!r}: use 'auto', {', '.join(map(repr, DTYPES))} or None"
            )
        if self.attention not in ATTENTION:
            raise ValueError(f"EngineConfig.attention {self.attention!r}: use one of {', '.join(ATTENTION)}")
        self.target_modules = tuple(self.target_modules)


def resolve_dtype(
    dtype: torch.dtype | str | None, device: torch.device, model_dtype: torch.dtype
) -> torch.dtype:
    """The compute dtype: "auto" is bfloat16 on a CUDA device with bf16 support, else float32."""
    if dtype is None:
        return model_dtype
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[dtype]


def enable_fast_matmul(device: torch.device) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA (Ampere and newer); nothing elsewhere."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
