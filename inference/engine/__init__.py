"""Multi-LoRA swap engine: many adapters served around one shared base model.

- config.py      EngineConfig (sizes fixed at start-up)
- messages.py    requests, results, stats, EngineBusy
- lora_layer.py  MultiLoraLinear: slot pool per layer, per-row gather + bmm (BGMV)
- prepared.py    adapters in pool layout (scale folded), weighted merges by rank concatenation
- host_tier.py   host-memory LRU tier with a byte budget
- slots.py       slot table: pins, LRU of idle slots, eviction
- scheduler.py   bounded queue, round-robin admission across adapters
- model_runner.py forward passes over persistent rows of a preallocated KV cache (Llama family)
- sampling.py    greedy / seeded temperature + top-p, stop strings
- engine.py      Engine: ties it together, decode loop in a worker thread
- peft_folder.py validated weights written back out as a PEFT folder (for disk-loading backends)
- vllm_backend.py VllmEngine: the same interface over vLLM (optional extra, CUDA)
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
