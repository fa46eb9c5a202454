"""Admission between decode steps: a bounded waiting queue served round-robin across adapters.

Each adapter (None = base model) has its own FIFO; admission takes one request per adapter in turn, so
a burst on one hot adapter cannot starve the others. If the adapter whose turn it is cannot get a slot
(every slot pinned, possible only when max_slots < max_batch), requests whose adapter is already in a
slot (or that need none) may still join the batch, since they take no slot from the head of the line,
but only `bypass_limit` of them while the head waits: after that admission stops until a slot is
released, so the head of the line cannot be starved by hot adapters that keep their slots pinned.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from inference.engine.lora_layer import NO_ADAPTER
from inference.engine.messages import EngineBusy, GenerationRequest, GenerationResult
from inference.engine.prepared import PreparedAdapter
from inference.engine.sampling import RowSampler, StopChecker

Outcome = GenerationResult | BaseException


@dataclass(eq=False)
class Job:
    """One request on its way through the engine."""

    id: int
    request: GenerationRequest
    key: str | None  # adapter key in the host tier / slot pool (a merge has its own key); None: base model
    adapter: PreparedAdapter | None  # held here so host-tier eviction cannot pull it from under the job
    prompt_ids: list[int]
    sampler: RowSampler
    on_done: Callable[[Outcome], None]
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float = 0.0
    swap_s: float = 0.0
    slot: int = NO_ADAPTER  # adapter handle in the page pool
    copy_pending: bool = False  # pages pinned, adapter not copied in yet
    output: list[int] = field(default_factory=list)
    text: str = ""  # set when a stop string cut the output
    cut_at_stop: bool = False
    stops: StopChecker | None = None  # incremental stop-string state, made at the first token
    record: bool = False  # keep final hidden states: `hidden` is [prefill [P, H], one [H] per decode step]
    hidden: list = field(default_factory=list)

    @property
    def kv_len(self) -> int:
        """Tokens of this running request in the KV cache, i.e. the position of the next one: the prompt
        and every output token but the newest, which the next decode step feeds."""
        return len(self.prompt_ids) + len(self.output) - 1

    @property
    def rank(self) -> int:
        return self.adapter.rank if self.adapter is not None else 0


class Scheduler:
    def __init__(self, max_queue: int, bypass_limit: int) -> None:
        self.max_queue = max_queue
        self.bypass_limit = bypass_limit
        self._queues: OrderedDict[str | None, deque[Job]] = OrderedDict()
        self._count = 0
        self._bypassed = 0  # admissions past a blocked head of the line, since it was last unblocked

    def __len__(self) -> int:
        return self._count

    def submit(self, job: Job) -> None:
        if self._count >= self.max_queue:
            raise EngineBusy(
                f"engine queue is full ({self.max_queue} waiting requests): retry later "
                "or raise EngineConfig.max_queue"
            )
        self._queues.setdefault(job.key, deque()).append(job)
        self._count += 1

    def admit(
        self, free_rows: int, place: Callable[[Job], bool], resident: Callable[[str | None], bool]
    ) -> list[Job]:
        """Up to `free_rows` jobs, one adapter at a time in round-robin order. `place(job)` pins a slot
        for the job (copying its adapter in if needed) and answers False when no slot is free;
        `resident(key)` says whether `key` needs no new slot (already in one, or None)."""
        taken: list[Job] = []
        while len(taken) < free_rows and self._queues:
            key, queue = next(iter(self._queues.items()))
            if not place(queue[0]):
                self._admit_resident(taken, free_rows, place, resident)
                break
            self._bypassed = 0
            taken.append(self._pop(key, queue))
        return taken

    def _admit_resident(
        self,
        taken: list[Job],
        free_rows: int,
        place: Callable[[Job], bool],
        resident: Callable[[str | None], bool],
    ) -> None:
        for key in list(self._queues)[1:]:
            queue = self._queues[key]
            while queue and len(taken) < free_rows and self._bypassed < self.bypass_limit and resident(key):
                if not place(queue[0]):
                    return
                self._bypassed += 1
                taken.append(self._pop(key, queue))

    def _pop(self, key: str | None, queue: deque[Job]) -> Job:
        job = queue.popleft()
        self._count -= 1
        del self._queues[key]
        if queue:
            self._queues[key] = queue  # back of the round-robin order
        return job

    def drain(self) -> list[Job]:
        jobs = [j for q in self._queues.values() for j in q]
        self._queues.clear()
        self._count = 0
        return jobs
