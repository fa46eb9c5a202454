"""Engine configuration: sizes fixed at start-up (the slot pool is allocated once from these)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class EngineConfig:
    max_slots: int = 8  # adapters resident on the device at once (the slot pool)
    max_rank: int = 64  # r_max: every slot is this wide; smaller ranks are zero-padded
    host_budget_bytes: int = 256 << 20  # host-memory tier of parsed adapters, LRU beyond this
    max_batch: int = 8  # rows decoded together in one step
    max_queue: int = 256  # waiting requests before generate() answers EngineBusy
    device: str = "cpu"
    dtype: torch.dtype | None = None  # None: keep the base model's dtype
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    # torch intra-op threads, set process-wide when the engine is built; 0 leaves torch's setting. On small
    # CPU machines fewer threads can be faster: the decode loop runs in a worker thread (docs/engine.md).
    cpu_threads: int = 0
    record_hidden: bool = False  # every request returns its final hidden states (see GenerationRequest)
    # Batch-invariant greedy decoding: a request's tokens never depend on its batch mates (each row runs its
    # own forward pass with shapes fixed by that row alone); costs throughput (docs/verification.md).
    deterministic: bool = False

    def __post_init__(self) -> None:
        for name in ("max_slots", "max_rank", "host_budget_bytes", "max_batch", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.cpu_threads, int) or self.cpu_threads < 0:
            raise ValueError(
                f"EngineConfig.cpu_threads must be >= 0 (0: torch's default), got {self.cpu_threads!r}"
            )
        if not self.target_modules:
            raise ValueError(
                "EngineConfig.target_modules is empty: name the linear layers adapters may target"
            )
        self.target_modules = tuple(self.target_modules)
