"""MultiLoraLinear: one base nn.Linear plus its share of the rank-paged adapter pool.

Pool layout (per wrapped layer): A `[pages, in]` and Bt `[pages, out]`, one rank row per page, in the
compute dtype, the adapter's scale folded into Bt when it was prepared (fp32 product, then cast). An
adapter of rank r owns r pages (`pages.py`); pages of a layer it does not target are zero.

A forward pass follows the plan of `LoraBatch` (`lora_plan.py`): per rank class, a decode step multiplies
the rows of that class by the pages of the class's distinct adapters in one masked GEMM pair, a prefill
(compute-bound) each adapter's rows by its own pages only (SGMV segments). Pages are read in place
when they form one contiguous run (e.g. a batch on one adapter), else gathered once per plan into a copy
that lives only while a plan uses it (counted in `workspace_bytes`). No per-row copies of A or B: memory
is the pool plus at most the distinct adapters of the current batch.
"""

from __future__ import annotations

import torch
from torch import nn

from inference.engine.lora_plan import NO_ADAPTER, Group, LoraBatch
from inference.engine.pages import page_runs

__all__ = ["NO_ADAPTER", "LoraBatch", "MultiLoraLinear", "wrap_model"]


class MultiLoraLinear(nn.Module):
    """y = base(x) + per rank-class group: ((x_g @ A_gᵀ) ⊙ M_g) @ B_g (see the module docstring)."""

    def __init__(self, base: nn.Linear, num_pages: int, batch: LoraBatch) -> None:
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        w = base.weight
        # Buffers: part of the module's memory and device moves, not of its parameters.
        self.register_buffer(
            "lora_a",
            torch.zeros(num_pages, self.in_features, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.register_buffer(
            "lora_b",
            torch.zeros(num_pages, self.out_features, dtype=w.dtype, device=w.device),
            persistent=False,
        )
        self.batch = batch
        self._dirty = [False] * num_pages  # page holds non-zero rows in this layer
        self._gathered: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._gathered_plan = -1

    @property
    def weight(self) -> torch.Tensor:  # some model code reads proj.weight.dtype/device
        return self.base.weight

    @property
    def pool_bytes(self) -> int:
        return self.lora_a.nbytes + self.lora_b.nbytes

    @property
    def workspace_bytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self._gathered.values())

    def write_pages(self, pages: list[int], a: torch.Tensor | None, bt: torch.Tensor | None) -> None:
        """Copy one adapter's A [r, in] and scaled Bt [r, out] into `pages` (None: this layer is not
        targeted, its pages are zeroed if an earlier occupant left rows there). One copy per contiguous
        run of pages; never allocates on the device."""
        for first, offset, n in page_runs(pages):
            if a is not None and bt is not None:
                self.lora_a[first : first + n].copy_(a[offset : offset + n], non_blocking=True)
                self.lora_b[first : first + n].copy_(bt[offset : offset + n], non_blocking=True)
                self._dirty[first : first + n] = [True] * n
            elif any(self._dirty[first : first + n]):
                self.lora_a[first : first + n].zero_()
                self.lora_b[first : first + n].zero_()
                self._dirty[first : first + n] = [False] * n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        b = self.batch
        if self._gathered_plan != b.plan_id:  # a new plan: keep only the gathered pages it still reads
            keep = {g.key for g in b.groups if g.view is None}
            self._gathered = {k: v for k, v in self._gathered.items() if k in keep}
            self._gathered_plan = b.plan_id
        if not b.groups:
            return y
        assert x.shape[0] == b.stop - b.start, "LoraBatch window does not match input"
        t = x.shape[1] if x.dim() == 3 else 1
        if not y.is_contiguous():
            y = y.contiguous()
        x2 = x.reshape(-1, self.in_features)
        y2 = y.view(-1, self.out_features)
        perm = b.perm_for(t)
        whole = perm is None and b.prefix == x.shape[0] and len(b.groups) == 1
        if whole and (t == 1 or len(b.groups[0].segments) == 1):
            (g,) = b.groups  # one group over every row of the window, in order: straight into y
            a, bt = self._weights(g)
            h = x2 @ a.t()
            if g.mask is not None:
                h.mul_(g.mask_for(t))
            y2.addmm_(h, bt)  # in place: y is ours, no second output buffer
            return y
        # adapter rows, in group order: a prefix of the window already, or gathered
        xs = x2[: b.prefix * t] if perm is None else x2.index_select(0, perm)
        delta = xs.new_empty(xs.shape[0], self.out_features)
        for g in b.groups:
            if t > 1 and all(seg[4] >= 0 for seg in g.segments):  # prefill, each adapter one page run
                for first, n, _, rank, page in g.segments:  # read in place: nothing gathered
                    rows = slice((g.first + first) * t, (g.first + first + n) * t)
                    h = xs[rows] @ self.lora_a[page : page + rank].t()
                    torch.mm(h, self.lora_b[page : page + rank], out=delta[rows])
                continue
            a, bt = self._weights(g)
            if t == 1:  # decode: one masked GEMM pair over the group's distinct adapters
                rows = slice(g.first, g.first + g.n_rows)
                h = xs[rows] @ a.t()
                if g.mask is not None:
                    h.mul_(g.mask)
                torch.mm(h, bt, out=delta[rows])
                continue
            for first, n, col, rank, _ in g.segments:  # prefill: compute-bound, each adapter at its rank
                rows = slice((g.first + first) * t, (g.first + first + n) * t)
                h = xs[rows] @ a[col : col + rank].t()
                torch.mm(h, bt[col : col + rank], out=delta[rows])
        if perm is None:
            y2[: b.prefix * t].add_(delta)
        else:
            y2.index_add_(0, perm, delta)
        return y

    def _weights(self, g: Group) -> tuple[torch.Tensor, torch.Tensor]:
        if g.view is not None:
            first, stop = g.view
            return self.lora_a[first:stop], self.lora_b[first:stop]
        pair = self._gathered.get(g.key)
        if pair is None:
            assert g.pages is not None
            pair = (self.lora_a.index_select(0, g.pages), self.lora_b.index_select(0, g.pages))
            self._gathered[g.key] = pair
        return pair


def wrap_model(
    model: nn.Module, targets: tuple[str, ...], num_pages: int, batch: LoraBatch
) -> dict[str, MultiLoraLinear]:
    """Replace every nn.Linear whose last name is in `targets` by a MultiLoraLinear holding the original
    module, with `num_pages` rank rows of adapter pool each. Returns {module path: wrapper}. Raises
    ValueError when nothing matches."""
    found = [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and name.rsplit(".", 1)[-1] in targets
    ]
    if not found:
        raise ValueError(
            f"no nn.Linear named one of {targets} in the base model: fix EngineConfig.target_modules"
        )
    batch.dtype = found[0][1].weight.dtype
    wrapped: dict[str, MultiLoraLinear] = {}
    for name, mod in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        wrapper = MultiLoraLinear(mod, num_pages, batch)
        setattr(parent, child, wrapper)
        wrapped[name] = wrapper
    return wrapped
