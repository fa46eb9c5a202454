"""Host-memory tier: prepared adapters under a byte budget, least recently used evicted first.
Thread-safe (the asyncio side puts, the decode thread and stats read)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from inference.engine.prepared import PreparedAdapter


class HostTier:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, PreparedAdapter] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def put(self, adapter: PreparedAdapter) -> None:
        size = adapter.nbytes
        if size > self.budget_bytes:
            raise ValueError(
                f"adapter {adapter.key!r} needs {size} bytes, more than the whole host tier "
                f"(EngineConfig.host_budget_bytes={self.budget_bytes}): raise the budget"
            )
        with self._lock:
            old = self._entries.pop(adapter.key, None)
            if old is not None:
                self._bytes -= old.nbytes
            while self._entries and self._bytes + size > self.budget_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
                self.evictions += 1
            self._entries[adapter.key] = adapter
            self._bytes += size

    def get(self, key: str) -> PreparedAdapter | None:
        """The adapter, marked most recently used; None when not in this tier."""
        with self._lock:
            adapter = self._entries.get(key)
            if adapter is not None:
                self._entries.move_to_end(key)
            return adapter

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def remove(self, key: str) -> bool:
        with self._lock:
            adapter = self._entries.pop(key, None)
            if adapter is None:
                return False
            self._bytes -= adapter.nbytes
            return True

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
