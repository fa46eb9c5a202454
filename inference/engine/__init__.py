"""Multi-LoRA swap engine: many adapters served around one shared base model.

- config.py        EngineConfig (sizes fixed at start-up; dtype, attention)
- messages.py      requests, results, stats, EngineBusy
- pages.py         PagePool: adapters resident by rank rows under one byte budget (pins, LRU, eviction)
- lora_plan.py     LoraBatch: adapter per persistent row; per-composition plan (rank groups, pages, masks)
- lora_layer.py    MultiLoraLinear: the paged pool per layer; rank-grouped masked GEMMs / SGMV segments
- prepared.py      adapters in pool layout (scale folded), weighted merges by rank concatenation
- host_tier.py     host-memory LRU tier with a byte budget
- slots.py         NoFreeSlot; the older fixed-slot table SlotPool
- swap.py          Swapper: swap-ins on a side CUDA stream with events (synchronous on CPU)
- transfers.py     Uploads: host -> device tensors, counted
- scheduler.py     bounded queue, round-robin admission across adapters
- kv_cache.py      RowKVCache: the persistent rows' KV cache
- attention.py     decode attention: flash_attn_with_kvcache, mask-free SDPA, masked SDPA
- model_runner.py  forward passes over persistent rows (Llama family), rows' state on the device
- sampling.py      greedy / seeded temperature + top-p on the device, stop strings
- engine.py        Engine: ties it together, decode loop in a worker thread
- engine_admission.py, engine_sync.py   the admission side and the synchronous entry points of Engine
- peft_folder.py   validated weights written back out as a PEFT folder (for disk-loading backends)
- vllm_backend.py  VllmEngine: the same interface over vLLM (optional extra, CUDA)
"""

from inference.engine.config import EngineConfig
from inference.engine.engine import Engine
from inference.engine.messages import (
    EngineBusy,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    HiddenStates,
    SlotInfo,
    StepRecord,
)

__all__ = [
    "Engine",
    "EngineBusy",
    "EngineConfig",
    "EngineStats",
    "GenerationRequest",
    "GenerationResult",
    "HiddenStates",
    "SlotInfo",
    "StepRecord",
]
