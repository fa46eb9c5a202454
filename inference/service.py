"""The node's one entry point into inference: fetch → verify → validate → host tier → generate.

Nothing from the network reaches the model without passing the adapter store (every block against
its CID, the file against the registry sha256) and validation (header, shapes, dtypes, ranks,
finite values) first."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference.engine import Engine, EngineConfig, GenerationRequest, GenerationResult
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import parse_cid
from inference.ipfs.errors import FetchError
from inference.ipfs.sources import BlockSource
from inference.ipfs.unixfs import import_directory
from inference.models import LoadedModel
from inference.prompt import check_prompt, max_output_bytes_per_token
from inference.store import AdapterStore
from inference.validate import AdapterRejected, BaseModelSpec, ValidationLimits, validate_adapter_dir

log = logging.getLogger("openlora.inference")
EngineFactory = Callable[..., Engine]  # (base, config, loader=...) -> an Engine or a backend shaped like it


@dataclass(frozen=True)
class PreparedAdapter:
    key: str  # the engine's name for it: the adapter's CID
    rank: int
    nbytes: int


class InferenceService:
    def __init__(
        self,
        base: LoadedModel,
        store: AdapterStore,
        engine_config: EngineConfig,
        limits: ValidationLimits | None = None,
        blocks: BlockStore | None = None,
        engine_factory: EngineFactory | None = None,
        *,
        failure_ttl_s: float = 600.0,
        fetch_timeout_s: float = 300.0,
    ) -> None:
        self.base = base
        self.store = store
        self.blocks = blocks  # when set, verified adapters are re-offered to peers (bitswap) from here
        # Validation refuses what the engine could not hold: a rank above the slot pool's is an
        # AdapterRejected (job left for others), never an error deep in the engine.
        limits = limits or ValidationLimits()
        self.limits = dataclasses.replace(limits, max_rank=min(limits.max_rank, engine_config.max_rank))
        self.spec = BaseModelSpec.from_model(base.model, name=base.name)
        # the built-in swap engine, or a backend with the same interface (engine/vllm_backend.py)
        self.engine = (engine_factory or Engine)(base, engine_config, loader=self._load)
        self._hashes: dict[str, bytes] = {}
        self._validated: dict[str, bytes] = {}  # CID -> content hash whose weights the engine holds
        self._failed: dict[tuple[str, bytes], tuple[float, Exception]] = {}  # (CID, hash) -> until, why
        self.failure_ttl_s = failure_ttl_s
        self.fetch_timeout_s = fetch_timeout_s
        self.validations: collections.Counter[str] = collections.Counter()  # per CID, this process
        self.refused_from_memory = 0  # prepare() calls answered by a remembered failure
        self._preparing: dict[tuple[str, bytes], asyncio.Future[PreparedAdapter]] = {}

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    async def _load(self, cid: str, sources: Sequence[BlockSource] | None = None):
        """The engine's loader for adapters that fell out of the host tier: back to the disk tier."""
        content_hash = self._hashes[cid]
        async with self.store.lease(cid, content_hash, sources=sources) as path:
            weights = await asyncio.to_thread(validate_adapter_dir, path, self.spec, self.limits)
            self.validations[cid] += 1
            self._validated[cid] = content_hash
            if self.blocks is not None:
                await asyncio.to_thread(self._offer_blocks, cid, path)
            return weights

    def _offer_blocks(self, cid: str, path: Path) -> None:
        """Rebuild the adapter's DAG from its verified files (the importer is deterministic) so peers can
        fetch it from us; only if the rebuilt root equals the registered CID."""
        if self.blocks.has(cid):
            return
        files = {p.name: p.read_bytes() for p in path.iterdir()}
        dag = import_directory(files, cid_version=parse_cid(cid).version)
        if dag.root == cid:
            self.blocks.put_dag(dag)
        else:
            log.info(
                "adapter %s was not built by our importer (root %s): not re-offered to peers", cid, dag.root
            )

    async def prepare(
        self, cid: str, content_hash: bytes, sources: Sequence[BlockSource] | None = None
    ) -> PreparedAdapter:
        """Make the adapter servable. `sources` overrides where blocks come from (e.g. warm peers first).
        Raises FetchError (bytes wrong or unreachable) or AdapterRejected (bytes right but unsafe or unfit
        for this base model).

        Validated once per (CID, content hash): an adapter the engine already holds (host tier) touches
        neither the disk tier nor the validator and keeps its slot. A failure is remembered for
        `failure_ttl_s`, so a poison adapter costs one fetch, not one per job; every fetch has an overall
        deadline (`fetch_timeout_s`)."""
        held = self.engine.host.get(cid) if hasattr(self.engine, "host") else None
        if held is not None and self._validated.get(cid) == content_hash:
            self._hashes[cid] = content_hash
            return PreparedAdapter(cid, held.rank, held.nbytes)
        key = (cid, content_hash)
        remembered = self._failed.get(key)
        if remembered is not None:
            until, error = remembered
            if time.monotonic() < until:
                self.refused_from_memory += 1
                raise error
            del self._failed[key]
        self._hashes[cid] = content_hash
        flight = self._preparing.get(key)
        if flight is None:  # single-flight: jobs of one adapter arriving together validate it once
            flight = asyncio.ensure_future(self._prepare_once(key, sources))
            self._preparing[key] = flight
            flight.add_done_callback(lambda _: self._preparing.pop(key, None))
        return await asyncio.shield(flight)

    async def _prepare_once(
        self, key: tuple[str, bytes], sources: Sequence[BlockSource] | None
    ) -> PreparedAdapter:
        cid, _ = key
        try:
            weights = await asyncio.wait_for(self._load(cid, sources), self.fetch_timeout_s)
        except (FetchError, AdapterRejected) as e:
            self._failed[key] = (time.monotonic() + self.failure_ttl_s, e)
            raise
        except TimeoutError:
            error = FetchError(
                f"adapter {cid}: not fetched and validated within {self.fetch_timeout_s:.0f}s "
                "([ipfs].fetch_timeout_s)",
                reason="timeout",
            )
            self._failed[key] = (time.monotonic() + self.failure_ttl_s, error)
            raise error from None
        # a CID fixes its bytes: weights re-read for a CID a slot still holds (after a host-tier eviction)
        # are the same weights, and keep their slot
        self.engine.add_adapter(cid, weights, same_weights=self._slot_holds(cid))
        return PreparedAdapter(cid, weights.rank, weights.nbytes)

    def prefetch(self, cid: str, content_hash: bytes) -> None:
        """Bring an adapter into the host tier ahead of its job (no-op when it is there already)."""
        host = getattr(self.engine, "host", None)
        if host is None or cid in host:
            return
        self._hashes[cid] = content_hash
        self.engine.prefetch(cid)

    def _slot_holds(self, cid: str) -> bool:
        return any(s.adapter == cid for s in self.engine.stats().slots)

    @property
    def max_positions(self) -> int:
        """Prompt + output tokens one request may use (the model's position limit)."""
        return int(getattr(self.base.model.config, "max_position_embeddings", 1 << 16))

    def check_input(self, raw: bytes, max_tokens: int) -> int:
        """The prompt's token count, exactly as the engine will encode it (chat template included), or
        PromptRejected: what the engine would refuse is refused before a claim."""
        return len(check_prompt(self.base.tokenizer, raw, max_tokens, self.max_positions))

    @functools.cached_property
    def max_output_bytes_per_token(self) -> int:
        """Upper bound of the UTF-8 bytes each generated token adds to a result (worst-case output size)."""
        return max_output_bytes_per_token(self.base.tokenizer)

    def is_warm(self, cid: str) -> bool:
        return cid in self.engine.host or any(s.adapter == cid for s in self.engine.stats().slots)

    def warm_adapters(self) -> tuple[list[str], list[str]]:
        """(adapters in device slots, adapters in the host tier only), by CID."""
        device = [s.adapter for s in self.engine.stats().slots if s.adapter]
        host = [cid for cid in self._hashes if cid in self.engine.host and cid not in device]
        return device, host

    async def generate(
        self,
        cid: str | None,
        content_hash: bytes | None,
        prompt: str,
        max_tokens: int,
        **sampling: object,
    ) -> GenerationResult:
        """Generation under the adapter (greedy unless `sampling` says otherwise: temperature, top_p, seed,
        stop); cid None = the bare base model. If the adapter fell out of the host tier (or the node
        restarted since `prepare`), the engine's loader brings it back from the disk tier, re-verified."""
        if cid is not None:
            if content_hash is None:
                raise ValueError("an adapter needs its registry content hash")
            self._hashes[cid] = content_hash
        return await self.engine.generate(
            GenerationRequest(prompt=prompt, adapter=cid, max_tokens=max_tokens, **sampling)  # type: ignore[arg-type]
        )
