"""MultiLoraLinear: one base nn.Linear plus a preallocated pool of LoRA slots, applied per batch row.

Pool layout (per wrapped layer): Aᵀ `[slots + 1, in, r_max]`, Bt `[slots + 1, r_max, out]`, both stored
transposed as the batched matmuls read them, with the adapter's scale folded into Bt at swap-in, so a
step does no extra multiply. The last slot is all zeros and stands for "no adapter". Rank r < r_max
occupies rows [0, r) and the rest stay zero, so computing with any width >= the batch's largest rank is
exact.

Rows are persistent (see `model_runner.py`): row i of the running batch keeps its index from prefill to
finish. Each layer keeps its own copy of every row's A / Bt (`_row_at`, `_row_bt`), refreshed only for
rows whose slot changed, so a decode step gathers nothing and a join or leave copies one row.
"""

from __future__ import annotations

import torch
from torch import nn

NO_ADAPTER = -1
_STALE = -2  # a gathered row that must be copied again before use


class LoraBatch:
    """Which slot each persistent row uses, and which rows the next forward pass covers (the window).
    Shared by all wrapped layers; the engine (through the model runner) sets it before every pass."""

    def __init__(self, max_rows: int = 0) -> None:
        self._zero_slot = 0  # set by wrap_model to the pool's all-zero slot
        self.row_slots: list[int] = []
        self.row_ranks: list[int] = []
        self.version = 0  # bumped whenever a row's slot changes: layers re-sync their gathered rows
        self.start, self.stop = 0, 0
        self.rank = 0  # widest rank among the window's rows; 0: no adapter in the window, skip LoRA
        # Widest rank ever set: the width of the layers' per-row copies. It only grows (a copy is
        # reallocated at most once per new width); each pass computes with the window's `rank` only.
        self.width = 0
        self.uniform_slot: int | None = None  # every row of the window uses this slot (no gather)
        self._plans: dict[tuple, tuple[torch.Tensor, torch.Tensor] | None] = {}  # see refresh_plan
        self._plans_version = -1
        self.resize(max_rows)

    def resize(self, max_rows: int) -> None:
        grow = max_rows - len(self.row_slots)
        if grow > 0:
            self.row_slots += [self._zero_slot] * grow
            self.row_ranks += [0] * grow

    def set_row(self, row: int, slot: int, rank: int) -> None:
        """Row `row` now uses `slot` (NO_ADAPTER for none) with an adapter of `rank`."""
        mapped = self._zero_slot if slot == NO_ADAPTER else slot
        if self.row_slots[row] != mapped:
            self.row_slots[row] = mapped
            self.version += 1
        self.row_ranks[row] = rank if mapped != self._zero_slot else 0
        self.width = max(self.width, self.row_ranks[row])

    def move_row(self, src: int, dst: int) -> None:
        self.set_row(dst, self.row_slots[src], self.row_ranks[src])

    def set_window(self, start: int, stop: int) -> None:
        self.start, self.stop = start, stop
        slots = self.row_slots[start:stop]
        self.rank = max(self.row_ranks[start:stop], default=0)
        self.uniform_slot = slots[0] if slots and all(s == slots[0] for s in slots) else None

    def slots_changed(self) -> None:
        """A slot's contents were rewritten: rows gathered from it must be copied again."""
        self.version += 1

    def refresh_plan(self, held: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Index tensors (rows, their slots) that bring a layer whose gathered rows hold `held` up to
        `row_slots`, or None when nothing changed. Built once per batch composition: every wrapped
        layer of a forward pass is in the same state, so the first builds them and the rest reuse."""
        if self._plans_version != self.version:
            self._plans.clear()
            self._plans_version = self.version
        key = (tuple(held), device)
        if key not in self._plans:
            changed = [i for i, s in enumerate(self.row_slots) if held[i] != s]
            self._plans[key] = (
                (
                    torch.tensor(changed, dtype=torch.long, device=device),
                    torch.tensor([self.row_slots[i] for i in changed], dtype=torch.long, device=device),
                )
                if changed
                else None
            )
        return self._plans[key]


class MultiLoraLinear(nn.Module):
    """y = base(x) + (x @ A[slot_row].T) @ Bt[slot_row], every row with its own slot, in one batched
    matmul pair per projection (Punica's BGMV, written with torch ops)."""

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
        self._row_at: torch.Tensor | None = None  # [rows, in, width]: each persistent row's A^T
        self._row_bt: torch.Tensor | None = None  # [rows, width, out]
        self._row_slot: list[int] = []  # which slot each gathered row holds (_STALE: none valid)
        self._synced = -1  # LoraBatch.version the gathered rows reflect

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
        if slot in self._row_slot:
            self._row_slot = [_STALE if s == slot else s for s in self._row_slot]
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
        assert x.dim() == 3 and x.shape[0] == b.stop - b.start, "LoraBatch window does not match input"
        at, bt = self._gathered_rows()
        at, bt = at[b.start : b.stop, :, :r], bt[b.start : b.stop, :r]  # views: the window, its rank
        h = torch.bmm(x, at)
        if not y.is_contiguous():
            return torch.baddbmm(y, h, bt)
        return y.baddbmm_(h, bt)  # in place: y is ours, no second output buffer

    def _gathered_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every persistent row's A^T / Bt, copied from the pool only for rows whose slot changed since
        the last pass: a decode step between two joins or leaves copies nothing."""
        b = self.batch
        rows, width = len(b.row_slots), b.width
        if self._row_at is None or self._row_at.shape[0] != rows or self._row_at.shape[2] < width:
            self._row_at = self.lora_at.new_zeros(rows, self.in_features, width)
            self._row_bt = self.lora_bt.new_zeros(rows, width, self.out_features)
            self._row_slot = [_STALE] * rows
            self._synced = -1
        assert self._row_bt is not None
        if self._synced != b.version:
            plan = b.refresh_plan(self._row_slot, self.lora_at.device)
            if plan is not None:
                idx, slots = plan
                w = self._row_at.shape[2]
                self._row_at.index_copy_(0, idx, self.lora_at[:, :, :w].index_select(0, slots))
                self._row_bt.index_copy_(0, idx, self.lora_bt[:, :w].index_select(0, slots))
                self._row_slot = list(b.row_slots)
            self._synced = b.version
        return self._row_at, self._row_bt


def wrap_model(
    model: nn.Module, targets: tuple[str, ...], num_slots: int, max_rank: int, batch: LoraBatch
) -> dict[str, MultiLoraLinear]:
    """Replace every nn.Linear whose last name is in `targets` by a MultiLoraLinear holding the original
    module. Returns {module path: wrapper}. Raises ValueError when nothing matches."""
    batch._zero_slot = num_slots
    batch.row_slots = [num_slots] * len(batch.row_slots)
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
