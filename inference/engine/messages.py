"""What goes in and out of the engine: requests, results, statistics, and the busy answer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class EngineBusy(Exception):
    """The waiting queue is full (EngineConfig.max_queue). Retry later or shed load upstream."""


@dataclass
class GenerationRequest:
    prompt: str
    adapter: str | None  # host-tier key of one adapter, or None for the bare base model
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None  # sampling seed; None: nondeterministic
    stop: tuple[str, ...] = ()  # stop strings; the text is cut before the first one
    chat: bool = True  # apply the tokenizer's chat template
    adapters: tuple[tuple[str, float], ...] = ()  # weighted merge ("ensemble") instead of `adapter`
    record_hidden: bool = False  # return the final hidden states (GenerationResult.hidden), for proofs

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.adapters and self.adapter is not None:
            raise ValueError("set either `adapter` or `adapters` (a weighted merge), not both")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
        self.stop = tuple(self.stop)
        self.adapters = tuple((str(k), float(w)) for k, w in self.adapters)


@dataclass
class HiddenStates:
    """The final normalized hidden states (what the LM head reads) one request's forward passes computed,
    in bfloat16: the input of a TOPLOC proof (inference/verify/). No extra forward pass makes them."""

    prompt_ids: list[int]
    prefill: torch.Tensor  # [len(prompt_ids), hidden]: every prompt position
    decode: torch.Tensor  # [steps, hidden]: each decode step's input token, at positions len(prompt_ids)...


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) | "length" (max_tokens)
    prompt_tokens: int
    queue_s: float  # submitted -> admitted into the running batch
    swap_s: float  # time spent copying this request's adapter into a slot (0 on a slot hit)
    total_s: float  # submitted -> finished
    hidden: HiddenStates | None = None  # with GenerationRequest.record_hidden or EngineConfig.record_hidden


@dataclass(frozen=True)
class SlotInfo:
    index: int
    adapter: str | None
    pinned: int  # requests in flight using this slot


@dataclass(frozen=True)
class StepRecord:
    """One forward pass of the decode loop, kept for observability and tests."""

    step: int
    kind: str  # "prefill" | "decode"
    request_ids: tuple[int, ...]
    adapters: tuple[str | None, ...]
    uploads: int = 0  # host -> device tensors built for this pass (0 while the batch composition holds)


@dataclass
class EngineStats:
    slots: list[SlotInfo]
    pool_bytes: int  # device memory held by the adapter page pool (fixed at start-up)
    host_bytes: int
    host_budget_bytes: int
    host_count: int
    swaps_in: int  # host -> slot copies
    evictions: int  # slot reassigned from one adapter to another
    host_evictions: int
    slot_hit_rate: float  # admissions whose adapter was already in a slot
    host_hit_rate: float  # requests whose adapter was already in the host tier
    tokens_generated: int
    tokens_per_s: float  # generated tokens / busy time of the decode loop
    queue_depth: int
    running: int
    extra: dict[str, float] = field(default_factory=dict)
