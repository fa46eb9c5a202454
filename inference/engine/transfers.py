"""Host -> device transfers, counted. Every per-step index or value tensor the engine builds from Python
data goes through `Uploads.tensor`, so a test can check that a decode step between two changes of the
batch's composition uploads nothing (the tensors of a composition are built once, on the device). On
CPU the same code runs and counts the same way: the count is of tensors built from host data."""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Uploads:
    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.count = 0

    def tensor(self, data: Sequence, dtype: torch.dtype) -> torch.Tensor:
        """`data` (a list, nested lists, or a host tensor) as a new tensor on the device: one upload."""
        self.count += 1
        if isinstance(data, torch.Tensor):
            return data.to(device=self.device, dtype=dtype, non_blocking=data.is_pinned())
        return torch.tensor(data, dtype=dtype, device=self.device)
