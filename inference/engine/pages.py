"""Rank-paged adapter residency (no tensors): the device pool is `num_pages` rank rows per wrapped layer
(S-LoRA's unified paging, for adapters), and an adapter of rank r holds r pages, so device memory is
proportional to the ranks actually resident, under one byte budget, instead of every slot padded to
r_max. Each resident adapter has a handle (what a batch row points at), its pages, its pins (requests in
flight) and a place in the LRU order of idle adapters. A pinned adapter is never evicted.

Pages are given out first-fit as one contiguous run when there is one (the layer then reads the pool
through a view, no gather), else as the lowest free pages (the layer gathers them once per batch
composition)."""

from __future__ import annotations

from collections import OrderedDict

from inference.engine.messages import SlotInfo
from inference.engine.slots import NoFreeSlot


class PagePool:
    def __init__(self, num_pages: int, max_rank: int) -> None:
        if num_pages < max_rank:
            raise ValueError(
                f"the adapter pool holds {num_pages} rank rows, fewer than one adapter of rank "
                f"max_rank={max_rank}: raise EngineConfig.pool_budget_bytes (or max_slots) or lower max_rank"
            )
        self.num_pages = num_pages
        self.max_rank = max_rank
        self._free: list[int] = list(range(num_pages))  # kept sorted
        self._handle_of: dict[str, int] = {}
        self._key: dict[int, str | None] = {}
        self._pages: dict[int, list[int]] = {}
        self._pins: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # resident, unpinned; least recently used first
        self._spare_handles: list[int] = []
        self._next_handle = 0
        self.lookups = 0
        self.hits = 0
        self.evictions = 0

    # ------------------------------------------------------------------ queries

    def lookup(self, key: str) -> int | None:
        return self._handle_of.get(key)

    def pages(self, handle: int) -> list[int]:
        return self._pages[handle]

    def pinned(self, handle: int) -> int:
        return self._pins.get(handle, 0)

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def resident(self) -> int:
        return len(self._pages)

    def info(self) -> list[SlotInfo]:
        """One entry per resident adapter (index = handle), then one empty entry per further adapter of
        max_rank that the free pages would hold."""
        out = [SlotInfo(h, self._key[h], self._pins[h]) for h in sorted(self._pages)]
        spare = self.free_pages // self.max_rank
        out += [SlotInfo(-1 - i, None, 0) for i in range(spare)]
        return out

    # ------------------------------------------------------------------ changes

    def acquire(self, key: str, rank: int) -> tuple[int, bool]:
        """Pin `key`: (handle, True) when resident, else (handle, False) with `rank` pages reserved and the
        caller copies the adapter in. Evicts least recently used idle adapters as needed. Raises
        NoFreeSlot (evicting nothing) when pinned adapters leave too few pages."""
        self.lookups += 1
        handle = self._handle_of.get(key)
        if handle is not None:
            self.hits += 1
            self._pin(handle)
            return handle, True
        if rank < 1 or rank > self.max_rank:
            raise ValueError(f"adapter {key!r}: rank {rank} outside 1..max_rank={self.max_rank}")
        reclaimable = sum(len(self._pages[h]) for h in self._idle)
        if self.free_pages + reclaimable < rank:
            raise NoFreeSlot(
                f"{rank} adapter pages needed, {self.free_pages} free and {reclaimable} held by idle "
                "adapters: every other page is pinned by requests in flight"
            )
        while self.free_pages < rank:
            self._evict(next(iter(self._idle)))
        handle = self._spare_handles.pop() if self._spare_handles else self._new_handle()
        self._pages[handle] = self._take(rank)
        self._key[handle] = key
        self._handle_of[key] = handle
        self._pins[handle] = 0
        self._pin(handle)
        return handle, False

    def release(self, handle: int) -> None:
        if self._pins.get(handle, 0) <= 0:
            raise RuntimeError(f"adapter handle {handle} released more often than acquired")
        self._pins[handle] -= 1
        if self._pins[handle] == 0:
            if self._key[handle] is None:  # forgotten while pinned: its pages go back now
                self._drop(handle)
            else:
                self._idle[handle] = None  # most recently used end

    def forget(self, key: str) -> None:
        """Detach `key` (its weights changed): later requests load it afresh; requests in flight keep the
        old copy until they finish, then its pages are freed."""
        handle = self._handle_of.pop(key, None)
        if handle is None:
            return
        self._key[handle] = None
        if self._pins[handle] == 0:
            self._idle.pop(handle, None)
            self._drop(handle)

    # ------------------------------------------------------------------ internals

    def _new_handle(self) -> int:
        self._next_handle += 1
        return self._next_handle - 1

    def _pin(self, handle: int) -> None:
        self._pins[handle] += 1
        self._idle.pop(handle, None)

    def _evict(self, handle: int) -> None:
        key = self._key[handle]
        if key is not None:
            del self._handle_of[key]
        self._idle.pop(handle)
        self._drop(handle)
        self.evictions += 1

    def _drop(self, handle: int) -> None:
        self._free = sorted(self._free + self._pages.pop(handle))
        del self._key[handle], self._pins[handle]
        self._spare_handles.append(handle)

    def _take(self, n: int) -> list[int]:
        free = self._free
        run_start = 0
        for i in range(1, len(free) + 1):
            if i == len(free) or free[i] != free[i - 1] + 1:  # a run free[run_start:i] ends here
                if i - run_start >= n:
                    taken = free[run_start : run_start + n]
                    del free[run_start : run_start + n]
                    return taken
                run_start = i
        taken = free[:n]
        del free[:n]
        return taken


def page_runs(pages: list[int]) -> list[tuple[int, int, int]]:
    """(first page, offset in the adapter's rows, length) of each contiguous run of `pages`."""
    runs: list[tuple[int, int, int]] = []
    for offset, p in enumerate(pages):
        if runs and runs[-1][0] + runs[-1][2] == p:
            first, off, n = runs[-1]
            runs[-1] = (first, off, n + 1)
        else:
            runs.append((p, offset, 1))
    return runs
