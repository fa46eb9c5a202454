"""Slot bookkeeping (no tensors): which adapter sits in which device slot, how many requests pin it,
and the LRU order of idle slots. A pinned slot is never chosen for eviction."""

from __future__ import annotations

from collections import OrderedDict

from inference.engine.messages import SlotInfo


class NoFreeSlot(Exception):
    """Every slot is pinned by a request in flight; wait for one to finish."""


class SlotPool:
    def __init__(self, num_slots: int) -> None:
        self.num_slots = num_slots
        self._key_of: list[str | None] = [None] * num_slots
        self._slot_of: dict[str, int] = {}
        self._pins = [0] * num_slots
        self._idle: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_slots))  # LRU first
        self.lookups = 0
        self.hits = 0
        self.evictions = 0

    def lookup(self, key: str) -> int | None:
        return self._slot_of.get(key)

    def can_acquire(self, key: str) -> bool:
        return key in self._slot_of or bool(self._idle)

    def acquire(self, key: str) -> tuple[int, bool]:
        """Pin a slot for `key`: (slot, True) when it is already resident, else (slot, False) and the
        caller must copy the adapter in. Raises NoFreeSlot when every slot is pinned."""
        self.lookups += 1
        slot = self._slot_of.get(key)
        if slot is not None:
            self.hits += 1
            self._pin(slot)
            return slot, True
        if not self._idle:
            raise NoFreeSlot(f"all {self.num_slots} slots are pinned by requests in flight")
        # Never-used slots come first in the idle order, so they are filled before anything is evicted.
        slot = next(iter(self._idle))
        old = self._key_of[slot]
        if old is not None:
            del self._slot_of[old]
            self.evictions += 1
        self._key_of[slot] = key
        self._slot_of[key] = slot
        self._pin(slot)
        return slot, False

    def release(self, slot: int) -> None:
        if self._pins[slot] <= 0:
            raise RuntimeError(f"slot {slot} released more often than acquired")
        self._pins[slot] -= 1
        if self._pins[slot] == 0:
            self._idle[slot] = None  # most recently used end

    def forget(self, key: str) -> None:
        """Detach `key` from its slot (its weights changed): later requests load it afresh; requests in
        flight keep the old copy until they finish."""
        slot = self._slot_of.pop(key, None)
        if slot is None:
            return
        self._key_of[slot] = None
        if self._pins[slot] == 0:
            self._idle.move_to_end(slot, last=False)

    def pinned(self, slot: int) -> int:
        return self._pins[slot]

    def info(self) -> list[SlotInfo]:
        return [SlotInfo(i, self._key_of[i], self._pins[i]) for i in range(self.num_slots)]

    def _pin(self, slot: int) -> None:
        self._pins[slot] += 1
        self._idle.pop(slot, None)
