"""An optional vLLM backend behind the Engine interface, for GPU operators who need tensor parallelism,
paged KV and vLLM's punica kernels at scale (`pip install 'openlora-node[vllm]'`, `[engine].backend =
"vllm"`). The node's supply chain is unchanged: adapters are fetched, verified and validated exactly as
for the built-in engine, and only the validated tensors, written back out as a PEFT folder, reach vLLM.

Not exercised in this repository's CI (it has no GPU and vLLM does not install on CPU); the folder
writer and the refusal without vLLM are tested, the generation path is tested where vLLM imports
(tests/test_engine_vllm.py)."""

from __future__ import annotations

import asyncio
import collections
import itertools
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from inference.adapter import AdapterWeights
from inference.engine.config import EngineConfig
from inference.engine.messages import (
    EngineBusy,
    EngineStats,
    GenerationRequest,
    GenerationResult,
    SlotInfo,
)
from inference.engine.peft_folder import write_peft_folder
from inference.models import LoadedModel
from inference.prompt import encode_prompt

Loader = Callable[[str], Awaitable[AdapterWeights]]


class VllmUnavailable(RuntimeError):
    """vLLM is not importable here; the message says how to install it or go back to the built-in engine."""


def require_vllm() -> None:
    """Raise VllmUnavailable unless vLLM imports here."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise VllmUnavailable(
            "[engine].backend = \"vllm\" but vLLM is not installed: pip install 'openlora-node[vllm]' on a"
            ' CUDA machine, or set [engine].backend = "builtin"'
        ) from exc


@dataclass(frozen=True)
class _Adapter:
    lora_id: int  # vLLM's integer id for the adapter (stable for as long as the key is known)
    path: Path
    nbytes: int


class _AdapterFolders:
    """The host tier of this backend: validated adapters as PEFT folders, LRU under a byte budget."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: collections.OrderedDict[str, _Adapter] = collections.OrderedDict()
        self._ids = itertools.count(1)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> _Adapter | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: str, weights: AdapterWeights, base_model: str) -> _Adapter:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        path = write_peft_folder(weights, self.root / f"a{next(self._ids)}", base_model=base_model)
        item = _Adapter(int(path.name[1:]), path, weights.nbytes)  # a new id: vLLM caches by id
        self._items[key] = item
        self.bytes += item.nbytes
        while self.bytes > self.budget_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self.bytes -= evicted.nbytes
            self.evictions += 1
            shutil.rmtree(evicted.path, ignore_errors=True)
        return item


class VllmEngine:
    """The Engine interface (add_adapter, prefetch, start/stop, generate, stats) over vLLM's async engine.
    `model_dir` is the base model as a Hugging Face folder (the embedded model's prepared folder)."""

    def __init__(
        self,
        base: LoadedModel,
        config: EngineConfig,
        loader: Loader | None = None,
        *,
        model_dir: Path,
        tensor_parallel_size: int = 1,
    ) -> None:
        require_vllm()
        self.base = base
        self.config = config
        self.model_dir = Path(model_dir)
        self.tensor_parallel_size = tensor_parallel_size
        self._loader = loader
        self._tmp = Path(tempfile.mkdtemp(prefix="openlora-vllm-adapters-"))
        self.host = _AdapterFolders(self._tmp, config.host_budget_bytes)
        self._loading: dict[str, asyncio.Future[_Adapter]] = {}
        self._engine = None
        self._inflight = 0
        self._recent: collections.deque[str] = collections.deque(maxlen=config.max_slots)
        self.tokens_generated = 0
        self.busy_s = 0.0
        self.host_hits = 0
        self.host_lookups = 0

    # ---- the Engine interface ------------------------------------------------------------------
    def add_adapter(self, key: str, weights: AdapterWeights, *, same_weights: bool = False) -> None:
        if weights.rank > self.config.max_rank:
            raise ValueError(f"adapter {key} has rank {weights.rank} > max_rank {self.config.max_rank}")
        self.host.put(key, weights, str(self.model_dir))

    def prefetch(self, key: str) -> None:
        if key not in self.host and self._loader is not None:
            self._start_load(key)

    async def start(self) -> None:
        from vllm import AsyncEngineArgs, AsyncLLMEngine

        args = AsyncEngineArgs(
            model=str(self.model_dir),
            enable_lora=True,
            max_loras=self.config.max_slots,
            max_lora_rank=self.config.max_rank,
            max_cpu_loras=max(self.config.max_slots, 64),
            max_num_seqs=self.config.max_batch,
            tensor_parallel_size=self.tensor_parallel_size,
        )
        self._engine = AsyncLLMEngine.from_engine_args(args)

    async def stop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and hasattr(engine, "shutdown"):
            engine.shutdown()
        shutil.rmtree(self._tmp, ignore_errors=True)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        if self._engine is None:
            raise RuntimeError("VllmEngine.generate before start()")
        if request.adapters:
            raise ValueError(
                "weighted adapter merges are served by the built-in engine, not the vLLM backend"
            )
        if self._inflight >= self.config.max_queue:
            raise EngineBusy(f"{self._inflight} requests in flight (max_queue {self.config.max_queue})")
        self._inflight += 1
        started = time.monotonic()
        try:
            lora = None
            if request.adapter is not None:
                adapter = await self._adapter(request.adapter)
                lora = LoRARequest(request.adapter, adapter.lora_id, str(adapter.path))
                self._recent.append(request.adapter)
            prompt_ids = encode_prompt(self.base.tokenizer, request.prompt, chat=request.chat)
            params = SamplingParams(
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
                stop=list(request.stop) or None,
            )
            final = None
            async for out in self._engine.generate(
                {"prompt_token_ids": prompt_ids}, params, str(uuid.uuid4()), lora_request=lora
            ):
                final = out
            assert final is not None
            choice = final.outputs[0]
            elapsed = time.monotonic() - started
            self.tokens_generated += len(choice.token_ids)
            self.busy_s += elapsed
            return GenerationResult(
                text=choice.text,
                token_ids=list(choice.token_ids),
                finish_reason="stop" if choice.finish_reason == "stop" else "length",
                prompt_tokens=len(prompt_ids),
                queue_s=0.0,  # vLLM schedules internally and does not report it per request
                swap_s=0.0,
                total_s=elapsed,
            )
        finally:
            self._inflight -= 1

    def stats(self) -> EngineStats:
        recent = list(dict.fromkeys(reversed(self._recent)))  # most recent first, distinct
        slots = [SlotInfo(i, key, 0) for i, key in enumerate(recent)]
        slots += [SlotInfo(i, None, 0) for i in range(len(slots), self.config.max_slots)]
        return EngineStats(
            slots=slots,  # vLLM does not expose its LoRA slots: the most recently used adapters stand in
            pool_bytes=0,
            host_bytes=self.host.bytes,
            host_budget_bytes=self.host.budget_bytes,
            host_count=len(self.host),
            swaps_in=0,
            evictions=0,
            host_evictions=self.host.evictions,
            slot_hit_rate=0.0,
            host_hit_rate=self.host_hits / self.host_lookups if self.host_lookups else 0.0,
            tokens_generated=self.tokens_generated,
            tokens_per_s=self.tokens_generated / self.busy_s if self.busy_s else 0.0,
            queue_depth=0,
            running=self._inflight,
            extra={"backend_vllm": 1.0},
        )

    # ---- internals -----------------------------------------------------------------------------
    async def _adapter(self, key: str) -> _Adapter:
        self.host_lookups += 1
        item = self.host.get(key)
        if item is not None:
            self.host_hits += 1
            return item
        if self._loader is None:
            raise KeyError(f"adapter {key} is not loaded and the engine has no loader")
        return await asyncio.shield(self._start_load(key))

    def _start_load(self, key: str) -> asyncio.Future[_Adapter]:
        """One load per key however many requests and prefetches ask for it."""
        pending = self._loading.get(key)
        if pending is None:
            pending = self._loading[key] = asyncio.ensure_future(self._load(key))
            pending.add_done_callback(lambda _: self._loading.pop(key, None))
        return pending

    async def _load(self, key: str) -> _Adapter:
        assert self._loader is not None
        weights = await self._loader(key)
        self.add_adapter(key, weights)
        item = self.host.get(key)
        assert item is not None
        return item
