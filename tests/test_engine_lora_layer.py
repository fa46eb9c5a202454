"""MultiLoraLinear's arithmetic against a plain per-row reference: mixed rows, "no adapter" rows, one
adapter (read in place), scattered pages (gathered once per plan), windows, moved rows, rewritten
adapters; the rank groups' shapes (a wide adapter does not widen narrow rows); memory accounting."""

from __future__ import annotations

import torch
from torch import nn

from inference.engine.lora_layer import NO_ADAPTER, LoraBatch, MultiLoraLinear, wrap_model

IN, OUT = 8, 6


def _layer(rows: int, pages: int = 32) -> tuple[nn.Module, MultiLoraLinear, LoraBatch]:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(IN, OUT, bias=False))
    batch = LoraBatch(rows)
    (layer,) = wrap_model(model, ("q_proj",), pages, batch).values()
    return model, layer, batch


def _adapter(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, IN, generator=g), torch.randn(rank, OUT, generator=g)


def _put(layer: MultiLoraLinear, batch: LoraBatch, handle: int, pages: list[int], pair) -> None:
    layer.write_pages(pages, *pair)
    batch.set_adapter(handle, pages)


def _reference(x: torch.Tensor, weight: torch.Tensor, rows: list, adapters: dict) -> torch.Tensor:
    out = []
    for i, handle in enumerate(rows):
        y = x[i] @ weight.t()
        if handle != NO_ADAPTER:
            a, bt = adapters[handle]
            y = y + (x[i] @ a.t()) @ bt
        out.append(y)
    return torch.stack(out)


def _set(batch: LoraBatch, rows: list[int], adapters: dict) -> None:
    for i, handle in enumerate(rows):
        batch.set_row(i, handle, adapters[handle][0].shape[0] if handle != NO_ADAPTER else 0)
    batch.set_window(0, len(rows))


@torch.inference_mode()
def test_mixed_rows_follow_row_and_adapter_changes() -> None:
    model, layer, batch = _layer(4)
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2)}
    _put(layer, batch, 0, [0, 1], adapters[0])
    _put(layer, batch, 1, [4, 5, 6, 7], adapters[1])
    x = torch.randn(4, 1, IN)
    rows = [0, 1, NO_ADAPTER, 1]
    _set(batch, rows, adapters)
    expected = _reference(x, layer.base.weight, rows, adapters)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x), expected)  # second step: same plan, nothing rebuilt

    adapters[1] = _adapter(3, 3)  # handle 1 rewritten with a narrower adapter between two steps
    _put(layer, batch, 1, [9, 10, 11], adapters[1])
    _set(batch, rows, adapters)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    rows = [1, 0, 0, NO_ADAPTER]  # the rows change adapters
    _set(batch, rows, adapters)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    prefill = torch.randn(4, 5, IN)  # several positions per row (prefill) through the same rows
    want = torch.stack([_reference(prefill[:, t], layer.base.weight, rows, adapters) for t in range(5)], 1)
    torch.testing.assert_close(model(prefill), want)


@torch.inference_mode()
def test_window_and_moved_rows() -> None:
    model, layer, batch = _layer(4)
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2), 2: _adapter(3, 4)}
    for h, pages in {0: [0, 1], 1: [2, 3, 4, 5], 2: [8, 9, 10]}.items():
        _put(layer, batch, h, pages, adapters[h])
    _set(batch, [0, 1, 2, NO_ADAPTER], adapters)
    model(torch.randn(4, 1, IN))
    batch.set_window(2, 4)  # a prefill of rows 2 and 3 only
    x = torch.randn(2, 3, IN)
    want = torch.stack(
        [_reference(x[:, t], layer.base.weight, [2, NO_ADAPTER], adapters) for t in range(3)], 1
    )
    torch.testing.assert_close(model(x), want)

    batch.move_row(2, 0)  # row 0 finished; the last running row (2) moves into its place
    batch.set_window(0, 2)
    x = torch.randn(2, 1, IN)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, [2, 1], adapters))


@torch.inference_mode()
def test_one_adapter_is_read_in_place_and_scattered_pages_are_gathered() -> None:
    model, layer, batch = _layer(3)
    adapters = {0: _adapter(4, 5), 1: _adapter(4, 6)}
    _put(layer, batch, 0, [3, 4, 5, 6], adapters[0])  # one run: a view of the pool
    _put(layer, batch, 1, [1, 7, 12, 20], adapters[1])  # scattered: gathered once per plan
    x = torch.randn(3, 2, IN)
    _set(batch, [0, 0, 0], adapters)
    (group,) = batch.groups
    assert group.view == (3, 7) and group.mask is None and batch.perm is None
    want = torch.stack([_reference(x[:, t], layer.base.weight, [0, 0, 0], adapters) for t in range(2)], 1)
    torch.testing.assert_close(model(x), want)
    assert layer.workspace_bytes == 0

    _set(batch, [1, 0, 1], adapters)  # both adapters: pages [1, 7, 12, 20, 3, 4, 5, 6] are not one run
    torch.testing.assert_close(
        model(x[:, :1])[:, 0], _reference(x[:, 0], layer.base.weight, [1, 0, 1], adapters)
    )
    assert layer.workspace_bytes == 8 * (IN + OUT) * 4  # two rank-4 adapters, once each (not per row)
    prefill = torch.randn(3, 4, IN)  # a prefill through the same plan: per-adapter segments
    want = torch.stack(
        [_reference(prefill[:, t], layer.base.weight, [1, 0, 1], adapters) for t in range(4)], 1
    )
    torch.testing.assert_close(model(prefill), want)

    _set(batch, [NO_ADAPTER] * 3, adapters)
    assert batch.groups == []
    torch.testing.assert_close(model(x), x @ layer.base.weight.t())
    assert layer.workspace_bytes == 0  # no plan reads the gathered pages any more: dropped


@torch.inference_mode()
def test_mixed_ranks_do_not_widen_each_other() -> None:
    """Rows of rank 8 compute at the width of the rank-8 adapters in the batch, whatever else is there:
    the plan puts a rank-64 row in its own group, and the outputs still equal the per-row reference."""
    model, layer, batch = _layer(6, pages=128)
    adapters = {0: _adapter(8, 1), 1: _adapter(8, 2), 2: _adapter(64, 3), 3: _adapter(2, 4)}
    for h, pages in {0: range(0, 8), 1: range(8, 16), 2: range(16, 80), 3: range(80, 82)}.items():
        _put(layer, batch, h, list(pages), adapters[h])
    rows = [0, 2, 1, 0, 3, NO_ADAPTER]
    _set(batch, rows, adapters)
    shapes = [(g.rank_class, g.n_rows, g.width) for g in batch.groups]
    assert shapes == [(64, 1, 64), (8, 3, 16), (2, 1, 2)]  # rank 8 rows: width 16 (two adapters), not 64
    x = torch.randn(6, 1, IN)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))


@torch.inference_mode()
def test_untargeted_layer_pages_are_zeroed_for_the_next_occupant() -> None:
    _model, layer, batch = _layer(1)
    _put(layer, batch, 0, [0, 1, 2], _adapter(3, 9))
    _put(layer, batch, 0, [0, 1, 2], (None, None))  # next occupant of those pages does not target q_proj
    assert torch.count_nonzero(layer.lora_a) == 0 and torch.count_nonzero(layer.lora_b) == 0


def _tensors(obj: object, seen: set[int]) -> int:
    """Bytes of every tensor reachable from `obj` (dicts, lists, tuples, module buffers), each once."""
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensors(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensors(v, seen) for v in obj)
    return 0


@torch.inference_mode()
def test_reported_bytes_are_everything_the_layer_allocates() -> None:
    model, layer, batch = _layer(4)
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2)}
    _put(layer, batch, 0, [0, 5], adapters[0])
    _put(layer, batch, 1, [1, 2, 9, 10], adapters[1])
    _set(batch, [0, 1, 1, 0], adapters)
    model(torch.randn(4, 1, IN))
    own = {k: v for k, v in vars(layer).items() if k != "_modules"}  # the base Linear is not the pool's
    assert layer.workspace_bytes > 0
    assert _tensors(own, set()) == layer.pool_bytes + layer.workspace_bytes
