"""MultiLoraLinear's arithmetic against a plain per-row reference: mixed rows, "no adapter" rows, the
uniform fast path, and the per-row weight copies being refreshed when rows, windows or slots change."""

from __future__ import annotations

import torch
from torch import nn

from inference.engine.lora_layer import NO_ADAPTER, LoraBatch, wrap_model


def _layer(rows: int, adapters: dict[int, tuple[torch.Tensor, torch.Tensor]]):
    """A wrapped q_proj with room for `rows` batch rows and `adapters` ({slot: (A, Bt)}) in its pool."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(8, 6, bias=False))
    batch = LoraBatch()
    (layer,) = wrap_model(model, ("q_proj",), 3, 4, batch).values()  # 3 slots, r_max 4
    batch.resize(rows)
    for slot, (a, bt) in adapters.items():
        layer.write_slot(slot, a, bt)
    return model, layer, batch


def _adapter(rank: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rank, 8, generator=g), torch.randn(rank, 6, generator=g)


def _reference(x: torch.Tensor, weight: torch.Tensor, rows: list, adapters: dict) -> torch.Tensor:
    out = []
    for i, slot in enumerate(rows):
        y = x[i] @ weight.t()
        if slot != NO_ADAPTER:
            a, bt = adapters[slot]
            y = y + (x[i] @ a.t()) @ bt
        out.append(y)
    return torch.stack(out)


def _set(batch: LoraBatch, rows: list[int], ranks: list[int]) -> None:
    for i, (slot, rank) in enumerate(zip(rows, ranks, strict=True)):
        batch.set_row(i, slot, rank)
    batch.set_window(0, len(rows))


@torch.inference_mode()
def test_mixed_rows_follow_row_and_slot_changes() -> None:
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2)}
    model, layer, batch = _layer(4, adapters)
    x = torch.randn(4, 1, 8)
    rows = [0, 1, NO_ADAPTER, 1]
    _set(batch, rows, [2, 4, 0, 4])
    expected = _reference(x, layer.base.weight, rows, adapters)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x), expected)  # second step: the gathered rows are reused

    adapters[1] = _adapter(3, 3)  # the slot is rewritten between two steps, rows unchanged
    layer.write_slot(1, *adapters[1])
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    rows = [1, 0, 0, NO_ADAPTER]  # the rows change slots
    _set(batch, rows, [3, 2, 2, 0])
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    prefill = torch.randn(4, 5, 8)  # several positions per row (prefill) through the same rows
    want = torch.stack([_reference(prefill[:, t], layer.base.weight, rows, adapters) for t in range(5)], 1)
    torch.testing.assert_close(model(prefill), want)


@torch.inference_mode()
def test_window_and_moved_rows() -> None:
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2), 2: _adapter(3, 4)}
    model, layer, batch = _layer(4, adapters)
    _set(batch, [0, 1, 2, NO_ADAPTER], [2, 4, 3, 0])
    model(torch.randn(4, 1, 8))  # gathers every row
    batch.set_window(2, 4)  # a prefill of rows 2 and 3 only
    x = torch.randn(2, 3, 8)
    want = torch.stack(
        [_reference(x[:, t], layer.base.weight, [2, NO_ADAPTER], adapters) for t in range(3)], 1
    )
    torch.testing.assert_close(model(x), want)

    batch.move_row(2, 0)  # row 0 finished; the last running row (2) moves into its place
    batch.set_window(0, 2)
    x = torch.randn(2, 1, 8)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, [2, 1], adapters))


@torch.inference_mode()
def test_uniform_batch_and_no_adapter_batch() -> None:
    adapters = {2: _adapter(4, 5)}
    model, layer, batch = _layer(3, adapters)
    x = torch.randn(3, 2, 8)
    _set(batch, [2, 2, 2], [4, 4, 4])
    assert batch.uniform_slot == 2
    want = torch.stack([_reference(x[:, t], layer.base.weight, [2, 2, 2], adapters) for t in range(2)], 1)
    torch.testing.assert_close(model(x), want)
    _set(batch, [NO_ADAPTER] * 3, [0, 0, 0])
    torch.testing.assert_close(model(x), x @ layer.base.weight.t())


@torch.inference_mode()
def test_row_copies_widen_when_a_wider_adapter_arrives() -> None:
    adapters = {0: _adapter(2, 6), 1: _adapter(4, 7)}
    model, layer, batch = _layer(2, adapters)
    _set(batch, [0, NO_ADAPTER], [2, 0])
    x = torch.randn(2, 1, 8)
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, [0, NO_ADAPTER], adapters))
    assert layer._row_at is not None and layer._row_at.shape[2] == 2
    _set(batch, [0, 1], [2, 4])  # a rank-4 adapter joins: the copies widen, row 0 is copied again
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, [0, 1], adapters))
    assert layer._row_at.shape[2] == 4
    _set(batch, [0, 0], [2, 2])  # narrower window again: computed at rank 2 on the wide copies
    batch.uniform_slot = None  # force the per-row path even though both rows share a slot
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, [0, 0], adapters))
