"""The naive backend: what a node without a swap engine does. One request at a time, and for each one
PEFT `load_adapter` from a folder on disk, `generate`, `delete_adapter`. It exists as the baseline of
`scripts/bench/node.py` (`[engine].backend = "naive"`): the same daemon, supply chain and validation,
only the serving differs. Greedy decoding only (sampled requests are refused)."""

from __future__ import annotations

import asyncio
import copy
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from inference.adapter import AdapterWeights
from inference.engine.config import EngineConfig
from inference.engine.messages import EngineStats, GenerationRequest, GenerationResult, SlotInfo
from inference.engine.peft_folder import write_peft_folder
from inference.models import LoadedModel
from inference.prompt import check_length, decode_output, encode_prompt

Loader = Callable[[str], Awaitable[AdapterWeights]]


@dataclass(frozen=True)
class _Folder:
    path: Path
    rank: int
    nbytes: int


class NaivePeftEngine:
    """The Engine interface (add_adapter, prefetch, start/stop, generate, stats) over plain PEFT."""

    def __init__(self, base: LoadedModel, config: EngineConfig, loader: Loader | None = None) -> None:
        self.base = base
        self.config = config
        self._loader = loader
        self.tokenizer = base.tokenizer
        model = copy.deepcopy(base.model).eval()
        # a PeftModel with a throw-away adapter, so load_adapter/delete_adapter work per request
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in model.named_modules()
                if isinstance(m, torch.nn.Linear) and "lm_head" not in name
            }
        )
        self.model = get_peft_model(model, LoraConfig(r=1, target_modules=targets, init_lora_weights=True))
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 1 << 16))
        self._dir = Path(tempfile.mkdtemp(prefix="openlora-naive-"))
        self.host: dict[str, _Folder] = {}  # adapter key -> its PEFT folder (the "host tier": disk)
        self._lock = asyncio.Lock()  # one request at a time
        self._running = False
        self._thread_lock = threading.Lock()
        self.tokens_generated = 0
        self.busy_s = 0.0
        self.loads = 0

    @property
    def alive(self) -> bool:
        return self._running

    def add_adapter(self, key: str, weights: AdapterWeights, *, same_weights: bool = False) -> None:
        folder = write_peft_folder(weights, self._dir / key.replace("/", "_"))
        self.host[key] = _Folder(folder, weights.rank, weights.nbytes)

    def prefetch(self, key: str) -> None:
        """Nothing to bring ahead: this backend reads the adapter from disk for every request."""

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not self._running:
            raise RuntimeError("engine is not running: call `await engine.start()` first")
        if request.temperature != 0 or request.adapters:
            raise ValueError("the naive backend serves greedy single-adapter requests only")
        submitted = time.monotonic()
        if request.adapter is not None and request.adapter not in self.host:
            if self._loader is None:
                raise KeyError(f"adapter {request.adapter!r} unknown and no loader")
            self.add_adapter(request.adapter, await self._loader(request.adapter))
        async with self._lock:
            admitted = time.monotonic()
            ids, text = await asyncio.to_thread(self._generate, request)
        done = time.monotonic()
        self.busy_s += done - admitted
        self.tokens_generated += len(ids)
        return GenerationResult(
            text=text,
            token_ids=ids,
            finish_reason="stop" if len(ids) < request.max_tokens else "length",
            prompt_tokens=self._prompt_len,
            queue_s=admitted - submitted,
            swap_s=0.0,
            total_s=done - submitted,
        )

    def _generate(self, request: GenerationRequest) -> tuple[list[int], str]:
        prompt = encode_prompt(self.tokenizer, request.prompt, chat=request.chat)
        check_length(len(prompt), request.max_tokens, self.max_positions)
        self._prompt_len = len(prompt)
        with self._thread_lock, torch.no_grad():
            name = None
            if request.adapter is not None:
                name = "job"
                self.model.load_adapter(str(self.host[request.adapter].path), adapter_name=name)
                self.model.set_adapter(name)
                self.loads += 1
            try:
                with self.model.disable_adapter() if name is None else nullcontext():
                    out = self.model.generate(
                        torch.tensor([prompt]),
                        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                        max_new_tokens=request.max_tokens,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=self.tokenizer.eos_token_id,
                    )
            finally:
                if name is not None:
                    self.model.set_adapter("default")
                    self.model.delete_adapter(name)
        ids = [int(t) for t in out[0, len(prompt) :]]
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return ids, decode_output(self.tokenizer, ids)

    def stats(self) -> EngineStats:
        return EngineStats(
            slots=[SlotInfo(0, None, 0)],
            pool_bytes=0,
            host_bytes=0,
            host_budget_bytes=self.config.host_budget_bytes,
            host_count=len(self.host),
            swaps_in=self.loads,
            evictions=0,
            host_evictions=0,
            slot_hit_rate=0.0,
            host_hit_rate=0.0,
            tokens_generated=self.tokens_generated,
            tokens_per_s=self.tokens_generated / self.busy_s if self.busy_s else 0.0,
            queue_depth=0,
            running=1 if self._lock.locked() else 0,
            extra={"backend_naive": 1.0},
        )
