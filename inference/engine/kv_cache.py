"""The persistent rows' KV cache: keys and values of every layer for `rows` rows, growing along positions.

Two layouts: head-major `[layers, rows, kv_heads, positions, dim]` (SDPA's), or position-major
`[layers, rows, positions, kv_heads, dim]` (FlashAttention's `flash_attn_with_kvcache`). `keys(i)` /
`values(i)` are always `[rows, kv_heads, positions, dim]` views.

With `bias_column` (the mask-free SDPA decode), keys and values carry 8 extra columns; key column `dim`
holds 0 at a row's filled positions and `NEG` elsewhere, and the query gets a 1 there, so q·k already
carries the length mask and SDPA runs without one (the flash and efficient kernels accept that).
"""

from __future__ import annotations

import torch

INITIAL_POSITIONS = 256
PAD = 8  # extra head columns with bias_column: keeps the head size a multiple of 8
NEG = -30000.0  # finite in float16 / bfloat16; times any softmax scale >= 1/256 still underflows exp()


class RowKVCache:
    def __init__(
        self,
        layers: int,
        rows: int,
        kv_heads: int,
        head_dim: int,
        max_positions: int,
        like: torch.Tensor,
        *,
        position_major: bool = False,
        bias_column: bool = False,
    ) -> None:
        self.max_positions = max_positions
        self.head_dim = head_dim
        self.dim = head_dim + (PAD if bias_column else 0)
        self.position_major = position_major
        self.bias_column = bias_column
        self._shape = (layers, rows, kv_heads)
        self._like = like
        self.k, self.v = self._alloc(min(INITIAL_POSITIONS, max_positions))

    def _alloc(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        layers, rows, heads = self._shape
        if self.position_major:
            shape = (layers, rows, positions, heads, self.dim)
        else:
            shape = (layers, rows, heads, positions, self.dim)
        k, v = self._like.new_zeros(shape), self._like.new_zeros(shape)
        if self.bias_column:
            self._head_major(k)[..., self.head_dim] = NEG
        return k, v

    def _head_major(self, t: torch.Tensor) -> torch.Tensor:
        return t.transpose(2, 3) if self.position_major else t

    def keys(self, layer: int) -> torch.Tensor:
        return self._head_major(self.k)[layer]

    def values(self, layer: int) -> torch.Tensor:
        return self._head_major(self.v)[layer]

    @property
    def positions(self) -> int:
        return int(self._head_major(self.k).shape[3])

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def ensure(self, positions: int) -> None:
        """Room for `positions` columns in every row (existing rows keep their contents)."""
        have = self.positions
        if positions <= have:
            return
        if positions > self.max_positions:
            raise ValueError(f"{positions} positions exceed the model's {self.max_positions}")
        k, v = self._alloc(min(self.max_positions, max(positions, 2 * have)))
        self._head_major(k)[..., :have, :].copy_(self._head_major(self.k))
        self._head_major(v)[..., :have, :].copy_(self._head_major(self.v))
        self.k, self.v = k, v

    def set_lengths(self, rows: range, lengths: list[int]) -> None:
        """Rows `rows` now hold `lengths` filled positions (bias column: 0 there, NEG beyond)."""
        if not self.bias_column:
            return
        bias = self._head_major(self.k)[..., self.head_dim]  # [layers, rows, heads, positions]
        for row, n in zip(rows, lengths, strict=True):
            bias[:, row, :, :n] = 0.0
            bias[:, row, :, n:] = NEG

    def mark_filled(self, rows: torch.Tensor, positions: torch.Tensor) -> None:
        """Each row in `rows` has one more filled position, at `positions` (device tensors)."""
        if self.bias_column:
            self._head_major(self.k)[:, rows, :, positions, self.head_dim] = 0.0

    def move_row(self, src: int, dst: int, length: int) -> None:
        for t in (self._head_major(self.k), self._head_major(self.v)):
            t[:, dst, :, :length].copy_(t[:, src, :, :length])
        if self.bias_column:
            self._head_major(self.k)[:, dst, :, length:, self.head_dim] = NEG

    def shrink(self) -> None:
        """Give back memory grown for long requests (call when no row is in use)."""
        if self.positions > INITIAL_POSITIONS:
            self.k, self.v = self._alloc(min(INITIAL_POSITIONS, self.max_positions))
