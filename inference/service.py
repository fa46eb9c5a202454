"""The node's one entry point into inference: fetch → verify → validate → host tier → generate.

Nothing from the network reaches the model without passing the adapter store (every block against
its CID, the file against the registry sha256) and validation (header, shapes, dtypes, ranks,
finite values) first."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from inference.engine import Engine, EngineConfig, GenerationRequest, GenerationResult
from inference.models import LoadedModel
from inference.store import AdapterStore
from inference.validate import BaseModelSpec, ValidationLimits, validate_adapter_dir

log = logging.getLogger("openlora.inference")


@dataclass(frozen=True)
class PreparedAdapter:
    key: str  # the engine's name for it: the adapter's CID
    rank: int
    nbytes: int


class InferenceService:
    def __init__(self, base: LoadedModel, store: AdapterStore, engine_config: EngineConfig,
                 limits: ValidationLimits | None = None) -> None:
        self.base = base
        self.store = store
        self.limits = limits or ValidationLimits()
        self.spec = BaseModelSpec.from_model(base.model, name=base.name)
        self.engine = Engine(base, engine_config, loader=self._load)
        self._hashes: dict[str, bytes] = {}

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def _load(self, cid: str):
        """The engine's loader for adapters that fell out of the host tier: back to the disk tier."""
        content_hash = self._hashes[cid]
        async with self.store.lease(cid, content_hash) as path:
            return await asyncio.to_thread(validate_adapter_dir, path, self.spec, self.limits)

    async def prepare(self, cid: str, content_hash: bytes) -> PreparedAdapter:
        """Make the adapter servable. Raises FetchError (bytes wrong or unreachable) or AdapterRejected
        (bytes right but unsafe or unfit for this base model)."""
        self._hashes[cid] = content_hash
        weights = await self._load(cid)
        self.engine.add_adapter(cid, weights)
        return PreparedAdapter(cid, weights.rank, weights.nbytes)

    async def generate(self, cid: str, content_hash: bytes, prompt: str, max_tokens: int) -> GenerationResult:
        """Greedy generation under the adapter. If it fell out of the host tier (or the node restarted
        since `prepare`), the engine's loader brings it back from the disk tier, re-verified."""
        self._hashes[cid] = content_hash
        return await self.engine.generate(GenerationRequest(prompt=prompt, adapter=cid, max_tokens=max_tokens))
