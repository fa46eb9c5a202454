"""MultiLoraLinear: one base nn.Linear plus a preallocated pool of LoRA slots, applied per batch row.

Layout (per wrapped layer): Aᵀ `[slots + 1, in, r_max]`, Bt `[slots + 1, r_max, out]`: both stored
transposed, as the batched matmuls read them (a gather is then one `index_select`, no transpose copy),
with the adapter's scale folded into Bt at swap-in, so a step does no extra multiply. The last
slot is all zeros and stands for "no adapter". Rank r < r_max occupies rows [0, r) and the rest stay
zero, so computing with any width >= the batch's largest rank is exact; the batch's largest rank is
used (`LoraBatch.rank`), not r_max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

NO_ADAPTER = -1


@dataclass
class LoraBatch:
    """Which slot each batch row uses, set by the engine before every forward pass and shared by all
    wrapped layers. `uniform_slot` short-cuts the common case of one adapter for the whole batch."""

    row_slots: torch.Tensor | None = None  # LongTensor [rows] of pool indices (zero slot for "none")
    uniform_slot: int | None = None  # all rows use this slot (no gather needed)
    rank: int = 0  # widest rank among the batch's slots; 0: no adapter in the batch, skip LoRA
    # Bumped whenever the rows or any slot's contents change: layers keep the gathered per-row A / Bt
    # of the current epoch, so decode steps between two admissions gather nothing.
    epoch: int = 0
    _zero_slot: int = field(default=0, repr=False)
    _last: tuple[tuple[int, ...], int] = field(default=((), -1), repr=False)

    def set_rows(self, slots: list[int], ranks: list[int], device: torch.device | str) -> None:
        """`slots[i]` is row i's slot or NO_ADAPTER; `ranks[i]` its adapter's rank (0 for none)."""
        rank = max(ranks, default=0)
        mapped = tuple(self._zero_slot if s == NO_ADAPTER else s for s in slots)
        if (mapped, rank) == self._last:
            return
        self._last = (mapped, rank)
        self.epoch += 1
        self.rank = rank
        self.row_slots, self.uniform_slot = None, None
        if rank == 0:
            return
        if all(s == mapped[0] for s in mapped):
            self.uniform_slot = mapped[0]
            return
        self.row_slots = torch.tensor(mapped, dtype=torch.long, device=device)

    def slots_changed(self) -> None:
        """Call after writing any slot: cached gathers may hold its old contents."""
        self._last = ((), -1)
        self.epoch += 1


class MultiLoraLinear(nn.Module):
    """y = base(x) + (x @ A[slot_row].T) @ Bt[slot_row], every row with its own slot, in one gather + bmm
    per projection (Punica's BGMV, written with torch ops)."""

    def __init__(self, base: nn.Linear, num_slots: int, max_rank: int, batch: LoraBatch) -> None:
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        w = base.weight
        # Registered as buffers: part of the module's memory and device moves, not of its parameters.
        self.register_buffer(
            "lora_at",
            torch.zeros(num_slots + 1, self.in_features, max_rank, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.register_buffer(
            "lora_bt",
            torch.zeros(num_slots + 1, max_rank, self.out_features, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.batch = batch
        self.slot_rank = [0] * (num_slots + 1)  # rows in use per slot, to zero only what is stale
        self._gathered: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (epoch, A^T [rows,in,r], Bt)

    @property
    def weight(self) -> torch.Tensor:  # some model code reads proj.weight.dtype/device
        return self.base.weight

    @property
    def pool_bytes(self) -> int:
        return (
            self.lora_at.numel() * self.lora_at.element_size()
            + self.lora_bt.numel() * self.lora_bt.element_size()
        )

    def write_slot(self, slot: int, a: torch.Tensor | None, bt: torch.Tensor | None) -> None:
        """Copy one adapter's A [r, in] and scaled Bt [r, out] into `slot` (None: this layer is not
        targeted). Copies only; never allocates on the device."""
        old = self.slot_rank[slot]
        r = 0 if a is None or bt is None else a.shape[0]
        if r:
            self.lora_at[slot, :, :r].copy_(a.t(), non_blocking=True)
            self.lora_bt[slot, :r].copy_(bt, non_blocking=True)
        if old > r:
            self.lora_at[slot, :, r:old].zero_()
            self.lora_bt[slot, r:old].zero_()
        self.slot_rank[slot] = r
        self._gathered = None
        self.batch.slots_changed()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        b = self.batch
        r = b.rank
        if r == 0:
            return y
        if b.uniform_slot is not None:
            at = self.lora_at[b.uniform_slot, :, :r]
            bt = self.lora_bt[b.uniform_slot, :r]
            if not y.is_contiguous():
                return y + (x @ at) @ bt
            y.view(-1, y.shape[-1]).addmm_(x.reshape(-1, x.shape[-1]) @ at, bt)  # in place: y is ours
            return y
        idx = b.row_slots
        assert idx is not None and x.dim() == 3 and x.shape[0] == idx.shape[0], (
            "LoraBatch does not match input"
        )
        gathered = self._gathered
        if gathered is None or gathered[0] != b.epoch:
            # Gathered once per batch composition, not per step: decode steps between two admissions
            # (or swaps) reuse it, so a step costs two small bmm's and no copy of the slot weights.
            at = self.lora_at[:, :, :r].index_select(0, idx)  # [rows, in, r], contiguous
            bt = self.lora_bt[:, :r].index_select(0, idx)  # [rows, r, out]
            gathered = self._gathered = (b.epoch, at, bt)
        return torch.baddbmm(y, torch.bmm(x, gathered[1]), gathered[2])  # y + (x A^T) Bt, one pass over y


def wrap_model(
    model: nn.Module, targets: tuple[str, ...], num_slots: int, max_rank: int, batch: LoraBatch
) -> dict[str, MultiLoraLinear]:
    """Replace every nn.Linear whose last name is in `targets` by a MultiLoraLinear holding the original
    module. Returns {module path: wrapper}. Raises ValueError when nothing matches."""
    batch._zero_slot = num_slots
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    if not found:
        raise ValueError(
            f"no nn.Linear named one of {targets} in the base model: fix EngineConfig.target_modules"
        )
    wrapped: dict[str, MultiLoraLinear] = {}
    for name, mod in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = MultiLoraLinear(mod, num_slots, max_rank, batch)
        setattr(parent, child, wrapper)
        wrapped[name] = wrapper
    return wrapped
