"""An adapter in the engine's own layout, checked against the wrapped model once, on the way into the
host tier: per module A [r, in] and Bt = (scale * B).T [r, out], contiguous, in the pool's dtype.
A swap-in is then a plain copy, and a bad adapter fails at `add_adapter`, not inside the decode loop."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from inference.adapter import AdapterWeights


@dataclass(frozen=True)
class PreparedAdapter:
    key: str
    rank: int
    # module path -> (a [r, in], bt [r, out]); not in repr: printing tensors is slow and useless in logs
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return sum(
            a.numel() * a.element_size() + bt.numel() * bt.element_size() for a, bt in self.layers.values()
        )


def prepare_adapter(
    key: str,
    weights: AdapterWeights,
    shapes: dict[str, tuple[int, int]],
    max_rank: int,
    dtype: torch.dtype,
    pin_memory: bool = False,
) -> PreparedAdapter:
    """`shapes` maps each wrapped module path to (in_features, out_features). Raises ValueError naming
    the problem and the fix when the adapter does not fit this engine."""
    if not weights.layers:
        raise ValueError(f"adapter {key!r} has no LoRA layers")
    if weights.rank > max_rank:
        raise ValueError(
            f"adapter {key!r} has rank {weights.rank} > EngineConfig.max_rank={max_rank}: "
            "raise max_rank (costs pool memory) or reject the adapter"
        )
    scale = weights.scale
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, pair in weights.layers.items():
        if path not in shapes:
            raise ValueError(
                f"adapter {key!r} targets {path!r}, which the engine does not wrap: add its last "
                "name to EngineConfig.target_modules or use a base model that has it"
            )
        n_in, n_out = shapes[path]
        r = weights.rank
        if tuple(pair.a.shape) != (r, n_in) or tuple(pair.b.shape) != (n_out, r):
            raise ValueError(
                f"adapter {key!r} layer {path!r}: A {tuple(pair.a.shape)}, B {tuple(pair.b.shape)} "
                f"do not fit rank {r} on a [{n_out}x{n_in}] linear (per-module ranks are not supported)"
            )
        a = pair.a.detach().to(dtype=dtype, device="cpu").contiguous()
        bt = (pair.b.detach().to(torch.float32) * scale).t().to(dtype).contiguous()
        layers[path] = (_pin(a) if pin_memory else a, _pin(bt) if pin_memory else bt)
    return PreparedAdapter(key=key, rank=weights.rank, layers=layers)


def merge_adapters(key: str, parts: list[tuple[PreparedAdapter, float]], max_rank: int) -> PreparedAdapter:
    """Weighted merge by rank concatenation: sum_i w_i * s_i * B_i A_i = [w_1 Bt_1; ...]^T [A_1; ...].
    Exact (PEFT's combination_type="cat"), rank = sum of ranks. Layers a part does not target
    contribute zero rows."""
    if not parts:
        raise ValueError("a merge needs at least one adapter")
    rank = sum(p.rank for p, _ in parts)
    if rank > max_rank:
        raise ValueError(
            f"merged adapter {key!r} would have rank {rank} (sum of parts) > EngineConfig.max_rank="
            f"{max_rank}: merge fewer adapters or raise max_rank"
        )
    paths = sorted({path for p, _ in parts for path in p.layers})
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in paths:
        ref_a, ref_bt = next(p.layers[path] for p, _ in parts if path in p.layers)
        a_rows, bt_rows = [], []
        for p, w in parts:
            if path in p.layers:
                a, bt = p.layers[path]
                a_rows.append(a)
                bt_rows.append(bt * w)
            else:
                a_rows.append(ref_a.new_zeros(p.rank, ref_a.shape[1]))
                bt_rows.append(ref_bt.new_zeros(p.rank, ref_bt.shape[1]))
        a, bt = torch.cat(a_rows).contiguous(), torch.cat(bt_rows).contiguous()
        pinned = ref_a.is_pinned()  # parts in pinned memory (CUDA): the merge too, for async swap-ins
        layers[path] = (_pin(a), _pin(bt)) if pinned else (a, bt)
    return PreparedAdapter(key=key, rank=rank, layers=layers)


def ensemble_key(parts: tuple[tuple[str, float], ...]) -> str:
    return "merge:" + "+".join(f"{w!r}*{k}" for k, w in parts)


def _pin(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory() if torch.cuda.is_available() else t
