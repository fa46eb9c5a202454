"""Forward passes of a Llama-architecture model over a persistent batch of rows (vLLM's "persistent
batch"): the only place that calls the model.

Each running request owns one row of a preallocated KV cache `[layers, rows, kv_heads, positions, dim]`
from prefill to finish; its token t sits at column t. A joining request is prefilled straight into a free
row (right padded, so the causal mask alone keeps padding out of every real token's attention); a finished
one is replaced by the last running row (one row copied), so running rows are always [0, n) and a decode
step never concatenates, re-pads or gathers the cache. A decode step masks each row's columns beyond its
own length; positions come from each row's length, so outputs equal an unbatched run (checked against
PEFT in the tests). Columns grow by doubling, up to the model's max positions, and shrink back when the
batch is empty.

`record=True` keeps the final normalized hidden states of the pass (what the LM head reads) in `hidden`,
one bfloat16 tensor per row, for TOPLOC proofs. `deterministic` runs every row of a pass on its own, with
shapes fixed by that row alone (its own prompt length, its own attention length, its own LoRA rank), so
its bits never depend on its batch mates: the simple batch-invariant form, at a throughput cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from inference.engine.lora_layer import LoraBatch

SUPPORTED_MODEL_TYPES = ("llama",)
_INITIAL_POSITIONS = 256


class UnsupportedModelError(ValueError):
    """A base model whose architecture this runner does not implement."""


class RowKVCache:
    """Keys and values of every layer for `rows` persistent rows; grows along positions on demand."""

    def __init__(
        self, layers: int, rows: int, kv_heads: int, head_dim: int, max_positions: int, like: torch.Tensor
    ) -> None:
        self.max_positions = max_positions
        self._shape = (layers, rows, kv_heads, head_dim)
        self._like = like
        self.k, self.v = self._alloc(min(_INITIAL_POSITIONS, max_positions))

    def _alloc(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        layers, rows, heads, dim = self._shape
        shape = (layers, rows, heads, positions, dim)
        return self._like.new_zeros(shape), self._like.new_zeros(shape)

    @property
    def positions(self) -> int:
        return int(self.k.shape[3])

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def ensure(self, positions: int) -> None:
        """Room for `positions` columns in every row (existing rows keep their contents)."""
        have = self.positions
        if positions <= have:
            return
        if positions > self.max_positions:
            raise ValueError(f"{positions} positions exceed the model's {self.max_positions}")
        k, v = self._alloc(min(self.max_positions, max(positions, 2 * have)))
        k[..., :have, :].copy_(self.k)
        v[..., :have, :].copy_(self.v)
        self.k, self.v = k, v

    def move_row(self, src: int, dst: int, length: int) -> None:
        self.k[:, dst, :, :length].copy_(self.k[:, src, :, :length])
        self.v[:, dst, :, :length].copy_(self.v[:, src, :, :length])

    def shrink(self) -> None:
        """Give back memory grown for long requests (call when no row is in use)."""
        if self.positions > _INITIAL_POSITIONS:
            self.k, self.v = self._alloc(min(_INITIAL_POSITIONS, self.max_positions))


def check_supported(model: PreTrainedModel) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"the engine runs {', '.join(SUPPORTED_MODEL_TYPES)} architectures, this base model is "
            f"{model_type!r}: use a Llama-architecture base model or the vllm backend"
        )


class ModelRunner:
    """Prefill and decode over persistent rows `[0, max_rows)` of `model` (a LlamaForCausalLM, possibly
    with MultiLoraLinear projections: `lora` then says which slot each row uses)."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device | str,
        max_rows: int,
        lora: LoraBatch | None = None,
        deterministic: bool = False,
    ) -> None:
        check_supported(model)
        self.model = model
        self.deterministic = deterministic
        self.hidden: list[torch.Tensor] = []  # per row of the last pass with record=True (bfloat16)
        self.device = torch.device(device)
        self.max_rows = max_rows
        self.lora = lora
        if lora is not None:
            lora.resize(max_rows)
        inner = model.model
        self._embed: nn.Module = inner.embed_tokens
        self._rotary: nn.Module = inner.rotary_emb
        self._norm: nn.Module = inner.norm
        self._layers: list[nn.Module] = list(inner.layers)
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self._gqa = self.kv_heads != self.num_heads
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 1 << 16))
        self.cache = RowKVCache(
            len(self._layers),
            max_rows,
            self.kv_heads,
            self.head_dim,
            self.max_positions,
            next(model.parameters()).detach(),
        )

    @torch.inference_mode()
    def prefill(
        self, start: int, prompts: list[list[int]], all_logits: bool = False, record: bool = False
    ) -> torch.Tensor:
        """Prefill `prompts` into rows [start, start + len(prompts)). Returns the logits [rows, vocab] at
        each prompt's last token, or with `all_logits` [rows, T, vocab] (right padded: row i's first
        len(prompts[i]) positions are real). `record`: `hidden[i]` is row i's [len(prompts[i]), H]."""
        rows, t = len(prompts), max(len(p) for p in prompts)
        if start < 0 or start + rows > self.max_rows:
            raise ValueError(f"rows [{start}, {start + rows}) outside the batch of {self.max_rows}")
        if self.deterministic and rows > 1 and not all_logits:
            logits, hidden = [], []
            for i, p in enumerate(prompts):
                logits.append(self.prefill(start + i, [p], record=record))
                hidden += self.hidden if record else []
            self.hidden = hidden
            return torch.cat(logits)
        self.cache.ensure(t)
        ids = torch.tensor([p + [0] * (t - len(p)) for p in prompts], dtype=torch.long, device=self.device)
        positions = torch.arange(t, device=self.device).expand(rows, t)
        if self.lora is not None:
            self.lora.set_window(start, start + rows)
        h = self._embed(ids)
        cos, sin = self._rotary(h, positions)
        for i, layer in enumerate(self._layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.cache.k[i, start : start + rows, :, :t] = k
            self.cache.v[i, start : start + rows, :, :t] = v
            o = F.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=self._gqa
            )
            h = self._finish_layer(layer, h, o)
        if record:
            normed = self._norm(h).to(torch.bfloat16)
            self.hidden = [normed[i, : len(p)] for i, p in enumerate(prompts)]
        if all_logits:
            return self.model.lm_head(self._norm(h))
        last = torch.tensor([len(p) - 1 for p in prompts], device=self.device)
        h = h[torch.arange(rows, device=self.device), last]
        return self.model.lm_head(self._norm(h))

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, lengths: list[int], record: bool = False) -> torch.Tensor:
        """One token per running row [0, n): row i's `tokens[i]` goes to position `lengths[i]` (the
        tokens it already has in the cache). Returns logits [n, vocab]. `record`: `hidden[i]` is [H]."""
        if not self.deterministic or len(lengths) == 1:
            return self._decode(0, tokens, lengths, record)
        logits, hidden = [], []
        for i, length in enumerate(lengths):
            logits.append(self._decode(i, tokens[i : i + 1], [length], record))
            hidden += self.hidden if record else []
        self.hidden = hidden
        return torch.cat(logits)

    def _decode(self, start: int, tokens: torch.Tensor, lengths: list[int], record: bool) -> torch.Tensor:
        """decode() for rows [start, start + len(lengths))."""
        n = len(lengths)
        t = max(lengths) + 1
        self.cache.ensure(t)
        pos = torch.tensor(lengths, dtype=torch.long, device=self.device)
        rows = torch.arange(start, start + n, device=self.device)
        mask = (torch.arange(t, device=self.device).view(1, t) <= pos.view(n, 1)).view(n, 1, 1, t)
        if self.lora is not None:
            self.lora.set_window(start, start + n)
        h = self._embed(tokens.view(n, 1).to(self.device))
        cos, sin = self._rotary(h, pos.view(n, 1))
        for i, layer in enumerate(self._layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            keys, values = self.cache.k[i], self.cache.v[i]
            keys[rows, :, pos] = k[:, :, 0]
            values[rows, :, pos] = v[:, :, 0]
            o = F.scaled_dot_product_attention(
                q,
                keys[start : start + n, :, :t],
                values[start : start + n, :, :t],
                attn_mask=mask,
                scale=attn.scaling,
                enable_gqa=self._gqa,
            )
            h = self._finish_layer(layer, h, o)
        normed = self._norm(h)
        if record:
            self.hidden = list(normed[:, 0].to(torch.bfloat16).unbind(0))
        return self.model.lm_head(normed)[:, 0]

    @torch.inference_mode()  # a cache grown inside a pass holds inference tensors: copy in that mode too
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Row `src` (with `length` cached tokens) continues as row `dst`."""
        self.cache.move_row(src, dst, length)
        if self.lora is not None:
            self.lora.move_row(src, dst)

    def _qkv(
        self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, t = x.shape[:2]
        q = attn.q_proj(x).view(rows, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(rows, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(rows, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        return q, k, v

    def _finish_layer(self, layer: nn.Module, h: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        rows, t = h.shape[:2]
        h = h + layer.self_attn.o_proj(attn_out.transpose(1, 2).reshape(rows, t, -1))
        return h + layer.mlp(layer.post_attention_layernorm(h))
