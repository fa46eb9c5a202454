"""MultiLoraLinear's arithmetic against a plain per-row reference: mixed rows, "no adapter" rows, the
uniform fast path, and the per-composition gather cache being refreshed when rows or slots change."""

from __future__ import annotations

import torch
from torch import nn

from inference.engine.lora_layer import NO_ADAPTER, LoraBatch, wrap_model


def _layer(slots: int = 3, max_rank: int = 4):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("q_proj", nn.Linear(8, 6, bias=False))
    batch = LoraBatch()
    (layer,) = wrap_model(model, ("q_proj",), slots, max_rank, batch).values()
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


@torch.inference_mode()
def test_mixed_rows_follow_row_and_slot_changes() -> None:
    model, layer, batch = _layer()
    adapters = {0: _adapter(2, 1), 1: _adapter(4, 2)}
    for slot, (a, bt) in adapters.items():
        layer.write_slot(slot, a, bt)
    x = torch.randn(4, 1, 8)
    rows = [0, 1, NO_ADAPTER, 1]
    batch.set_rows(rows, [2, 4, 0, 4], "cpu")
    expected = _reference(x, layer.base.weight, rows, adapters)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x), expected)  # second step: served from the gather cache

    adapters[1] = _adapter(3, 3)  # the slot is rewritten between two steps, rows unchanged
    layer.write_slot(1, *adapters[1])
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    rows = [1, 0, 0, NO_ADAPTER]  # the batch composition changes
    batch.set_rows(rows, [3, 2, 2, 0], "cpu")
    torch.testing.assert_close(model(x), _reference(x, layer.base.weight, rows, adapters))

    prefill = torch.randn(4, 5, 8)  # several positions per row (prefill) through the same cache
    want = torch.stack([_reference(prefill[:, t], layer.base.weight, rows, adapters) for t in range(5)], 1)
    torch.testing.assert_close(model(prefill), want)


@torch.inference_mode()
def test_uniform_batch_and_no_adapter_batch() -> None:
    model, layer, batch = _layer()
    adapters = {2: _adapter(4, 5)}
    layer.write_slot(2, *adapters[2])
    x = torch.randn(3, 2, 8)
    batch.set_rows([2, 2, 2], [4, 4, 4], "cpu")
    assert batch.uniform_slot == 2
    want = torch.stack([_reference(x[:, t], layer.base.weight, [2, 2, 2], adapters) for t in range(2)], 1)
    torch.testing.assert_close(model(x), want)
    batch.set_rows([NO_ADAPTER] * 3, [0, 0, 0], "cpu")
    torch.testing.assert_close(model(x), x @ layer.base.weight.t())
