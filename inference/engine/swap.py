"""Swap-ins: host tier -> device pool pages, on a side CUDA stream, outside the engine's model lock.

The host tier holds each adapter's A / Bt contiguous (and pinned on CUDA), so a copy is a DMA that does
not block the host. On CUDA every swap-in is queued on `stream` and an event recorded after it; the next
forward pass makes the compute stream wait on the events of all swaps queued before it (`wait`), so
compute never reads a page before its copy lands and the copy overlaps whatever the GPU is doing. On
CPU the same code runs and the copies are synchronous (no stream, no events)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


class Swapper:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
        self._events: list[torch.cuda.Event] = []
        self.lock = threading.Lock()  # held while copying: one writer of the pool at a time
        self.queued = 0  # swap-ins issued on the side stream (0 on CPU)
        self.synchronous = False  # wait for each copy to land (benchmarks timing the copy itself)

    def copy(self, write: Callable[[], None]) -> None:
        """Run `write` (device copies into free pages); call with `lock` held."""
        if self.stream is None:
            write()
            return
        # The side stream must not start before the compute stream's earlier work on these pages
        # (e.g. zeroing, a previous occupant's reads) is done.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            write()
            event = torch.cuda.Event()
            event.record(self.stream)
        self._events.append(event)
        self.queued += 1
        if self.synchronous:
            event.synchronize()

    def wait(self) -> None:
        """Make the current (compute) stream wait for every swap queued so far."""
        with self.lock:
            events, self._events = self._events, []
        if self.stream is None:
            return
        current = torch.cuda.current_stream(self.device)
        for event in events:
            current.wait_event(event)
