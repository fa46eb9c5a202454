"""Which adapter each persistent batch row uses, and the per-composition plan every wrapped layer reads.

Rows are grouped by rank class (the next power of two of the adapter's rank), so a rank-64 adapter in
the batch never widens the rank-8 rows: each group computes `(x_g @ A_gᵀ) ⊙ M_g @ B_g`, where A_g / B_g
are the pool pages of the group's distinct adapters side by side (R_g = the sum of their ranks) and M_g
keeps, for each row, only its own adapter's columns (SGMV's segments, as two dense GEMMs per group).
The plan's tensors (row indices, page indices, column owners, the mask) are built once per batch
composition on the device, through the counted uploads (`transfers.py`); a decode step that changes
nothing reuses them and uploads nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inference.engine.transfers import Uploads

NO_ADAPTER = -1


def rank_class(rank: int) -> int:
    return 1 << max(0, rank - 1).bit_length()


@dataclass
class Group:
    """Rows of one rank class in the current window."""

    rank_class: int
    n_rows: int
    rows: torch.Tensor | None  # window-relative row indices [n_rows]; None: every row of the window
    pages: torch.Tensor | None  # page ids of the distinct adapters, concatenated [width]; None: see view
    view: tuple[int, int] | None  # (first, stop): the pages are one contiguous run, read in place
    mask: torch.Tensor | None  # [n_rows, width]; None: one distinct adapter (every column is the row's)
    key: tuple[tuple[int, int], ...]  # (handle, generation) of the distinct adapters: the gather cache key
    width: int
    _per_t: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = field(default_factory=dict)

    def for_tokens(self, t: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(token indices into the flattened [rows * t] input, mask per token) for `t` tokens per row."""
        if t == 1:
            return self.rows, self.mask
        if t not in self._per_t:
            idx = None
            if self.rows is not None:
                offsets = torch.arange(t, device=self.rows.device)
                idx = (self.rows.view(-1, 1) * t + offsets).reshape(-1)
            mask = None if self.mask is None else self.mask.repeat_interleave(t, dim=0)
            self._per_t[t] = (idx, mask)
        return self._per_t[t]


class LoraBatch:
    """Shared by all wrapped layers; the engine (through the model runner) sets rows and the window."""

    def __init__(self, max_rows: int = 0) -> None:
        self.row_slots: list[int] = []  # adapter handle per persistent row, or NO_ADAPTER
        self.row_ranks: list[int] = []
        self.handle_pages: dict[int, list[int]] = {}  # resident adapters' pool pages
        self.handle_gen: dict[int, int] = {}  # bumped at every copy into a handle's pages
        self.uploads = Uploads("cpu")
        self.dtype = torch.float32  # the mask's dtype: set by wrap_model to the pool's
        self.version = 0  # bumped whenever a row's adapter or a resident adapter's contents change
        self.start, self.stop = 0, 0
        self.groups: list[Group] = []
        self.plan_id = 0  # changes with every new plan: layers drop gathered pages no plan uses
        self._plan_key: tuple[int, int, int] | None = None
        self.resize(max_rows)

    def resize(self, max_rows: int) -> None:
        grow = max_rows - len(self.row_slots)
        if grow > 0:
            self.row_slots += [NO_ADAPTER] * grow
            self.row_ranks += [0] * grow

    def set_row(self, row: int, slot: int, rank: int) -> None:
        """Row `row` now uses adapter handle `slot` (NO_ADAPTER for none) of `rank`."""
        rank = rank if slot != NO_ADAPTER else 0
        if self.row_slots[row] != slot or self.row_ranks[row] != rank:
            self.row_slots[row], self.row_ranks[row] = slot, rank
            self.version += 1

    def move_row(self, src: int, dst: int) -> None:
        self.set_row(dst, self.row_slots[src], self.row_ranks[src])

    def set_adapter(self, handle: int, pages: list[int]) -> None:
        """`handle`'s pages were (re)written: plans and gathered copies that read them are stale."""
        self.handle_pages[handle] = list(pages)
        self.handle_gen[handle] = self.handle_gen.get(handle, 0) + 1
        self.version += 1

    @property
    def rank(self) -> int:
        """Widest rank among the window's rows (0: no adapter in the window)."""
        return max(self.row_ranks[self.start : self.stop], default=0)

    def set_window(self, start: int, stop: int) -> None:
        """The next forward pass covers rows [start, stop): (re)build the plan if anything changed."""
        self.start, self.stop = start, stop
        key = (self.version, start, stop)
        if key == self._plan_key:
            return
        self._plan_key = key
        self.plan_id += 1
        self.groups = self._build(start, stop)

    def _build(self, start: int, stop: int) -> list[Group]:
        by_class: dict[int, list[tuple[int, int]]] = {}
        for j, row in enumerate(range(start, stop)):
            handle = self.row_slots[row]
            if handle != NO_ADAPTER:
                by_class.setdefault(rank_class(self.row_ranks[row]), []).append((j, handle))
        groups = []
        for cls in sorted(by_class):
            members = by_class[cls]
            distinct = list(dict.fromkeys(h for _, h in members))
            pages = [p for h in distinct for p in self.handle_pages[h]]
            owner = [i for i, h in enumerate(distinct) for _ in self.handle_pages[h]]
            contiguous = pages == list(range(pages[0], pages[0] + len(pages)))
            rows = None
            if len(members) != stop - start:
                rows = self.uploads.tensor([j for j, _ in members], torch.long)
            mask = None
            if len(distinct) > 1:
                where = {h: i for i, h in enumerate(distinct)}
                row_owner = self.uploads.tensor([where[h] for _, h in members], torch.long)
                col_owner = self.uploads.tensor(owner, torch.long)
                mask = (row_owner.view(-1, 1) == col_owner.view(1, -1)).to(self.dtype)
            groups.append(
                Group(
                    rank_class=cls,
                    n_rows=len(members),
                    rows=rows,
                    pages=None if contiguous else self.uploads.tensor(pages, torch.long),
                    view=(pages[0], pages[0] + len(pages)) if contiguous else None,
                    mask=mask,
                    key=tuple((h, self.handle_gen.get(h, 0)) for h in distinct),
                    width=len(pages),
                )
            )
        return groups
