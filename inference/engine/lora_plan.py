"""Which adapter each persistent batch row uses, and the per-composition plan every wrapped layer reads.

Rows are grouped by rank class (the next power of two of the adapter's rank), so a rank-64 adapter in
the batch never widens the rank-8 rows: each group computes `(x_g @ A_gᵀ) ⊙ M_g @ B_g`, where A_g / B_g
are the pool pages of the group's distinct adapters side by side (R_g = the sum of their ranks) and M_g
keeps, for each row, only its own adapter's columns (SGMV's segments, as two dense GEMMs per group).
The window's adapter rows are gathered once per layer in group order (`perm`) and the groups' products
scattered back with one `index_add_`, so a layer costs two index ops plus a few small GEMMs per group;
the engine prefills joining rows already in group order, so a prefill needs neither (`perm` None).
The plan's tensors (row order, page indices, column owners, the mask) are built once per batch
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
    first: int  # the group's rows are [first, first + n_rows) of the permuted adapter rows
    n_rows: int
    pages: torch.Tensor | None  # page ids of the distinct adapters, concatenated [width]; None: see view
    view: tuple[int, int] | None  # (first, stop): the pages are one contiguous run, read in place
    mask: torch.Tensor | None  # [n_rows, width]; None: one distinct adapter (every column is the row's)
    key: tuple[tuple[int, int], ...]  # (handle, generation) of the distinct adapters: the gather cache key
    width: int
    # per distinct adapter: (first row in the group, rows, first column of A_g / B_g, rank, first pool
    # page when its pages are one run, else -1)
    segments: tuple[tuple[int, int, int, int, int], ...] = ()
    _per_t: dict[int, torch.Tensor] = field(default_factory=dict)

    def mask_for(self, t: int) -> torch.Tensor | None:
        """The mask for `t` tokens per row (rows' tokens are consecutive)."""
        if t == 1 or self.mask is None:
            return self.mask
        if t not in self._per_t:
            self._per_t[t] = self.mask.repeat_interleave(t, dim=0)
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
        self.perm: torch.Tensor | None = None  # window rows with an adapter, in group order
        self.prefix = 0  # with perm None: the adapter rows are window rows [0, prefix), in group order
        self._perm_t: dict[int, torch.Tensor] = {}
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

    def perm_for(self, t: int) -> torch.Tensor | None:
        """`perm` as indices into the flattened [rows * t] tokens of the window."""
        if t == 1 or self.perm is None:
            return self.perm
        if t not in self._perm_t:
            offsets = torch.arange(t, device=self.perm.device)
            self._perm_t[t] = (self.perm.view(-1, 1) * t + offsets).reshape(-1)
        return self._perm_t[t]

    def _build(self, start: int, stop: int) -> list[Group]:
        by_class: dict[int, list[tuple[int, int]]] = {}
        for j, row in enumerate(range(start, stop)):
            handle = self.row_slots[row]
            if handle != NO_ADAPTER:
                by_class.setdefault(rank_class(self.row_ranks[row]), []).append((j, handle))
        groups, order = [], []
        for cls in sorted(by_class, reverse=True):
            members = by_class[cls]
            distinct = list(dict.fromkeys(h for _, h in members))
            where = {h: i for i, h in enumerate(distinct)}
            members.sort(key=lambda m: where[m[1]])  # stable: each adapter's rows one segment
            pages = [p for h in distinct for p in self.handle_pages[h]]
            contiguous = pages == list(range(pages[0], pages[0] + len(pages)))
            segments, col = [], 0
            for i, h in enumerate(distinct):
                n = sum(1 for _, m in members if m == h)
                first_row = segments[-1][0] + segments[-1][1] if segments else 0
                own = self.handle_pages[h]
                run = own[0] if own == list(range(own[0], own[0] + len(own))) else -1
                segments.append((first_row, n, col, len(own), run))
                col += len(self.handle_pages[h])
                assert where[h] == i
            mask = None
            if len(distinct) > 1:
                owner = [i for i, h in enumerate(distinct) for _ in self.handle_pages[h]]
                row_owner = self.uploads.tensor([where[h] for _, h in members], torch.long)
                col_owner = self.uploads.tensor(owner, torch.long)
                mask = (row_owner.view(-1, 1) == col_owner.view(1, -1)).to(self.dtype)
            groups.append(
                Group(
                    rank_class=cls,
                    first=len(order),
                    n_rows=len(members),
                    pages=None if contiguous else self.uploads.tensor(pages, torch.long),
                    view=(pages[0], pages[0] + len(pages)) if contiguous else None,
                    mask=mask,
                    key=tuple((h, self.handle_gen.get(h, 0)) for h in distinct),
                    width=len(pages),
                    segments=tuple(segments),
                )
            )
            order += [j for j, _ in members]
        self._perm_t = {}
        self.prefix = len(order)
        in_order = order == list(range(len(order)))  # adapter rows already a prefix, in group order
        self.perm = None if in_order else self.uploads.tensor(order, torch.long)
        return groups
