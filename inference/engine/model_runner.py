"""Forward passes of a Llama-architecture model over a persistent batch of rows (vLLM's "persistent
batch"): the only place that calls the model.

Each running request owns one row of a preallocated KV cache (`kv_cache.py`) from prefill to finish; its
token t sits at column t. A joining request is prefilled straight into a free row (right padded, so the
causal mask alone keeps padding out of every real token's attention); a finished one is replaced by the
last running row (one row copied), so running rows are always [0, n) and a decode step never
concatenates, re-pads or gathers the cache. Each row's next input token and its length live on the
device (`tokens`, `lengths`): set at prefill, advanced by the decode step itself, moved with the row, so
a decode step builds nothing from host data (`uploads` counts what is). Positions come from each row's
length, so outputs equal an unbatched run (checked against PEFT in the tests). Columns grow by doubling,
up to the model's max positions, and shrink back when the batch is empty. Attention: `attention.py`.

`record=True` keeps the final normalized hidden states of the pass (what the LM head reads) in `hidden`,
one bfloat16 tensor per row, for TOPLOC proofs. `deterministic` runs every row of a pass on its own, with
shapes fixed by that row alone (its own prompt length, its own attention length, its own LoRA rank), so
its bits never depend on its batch mates: the simple batch-invariant form, at a throughput cost.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from inference.engine.attention import decode_flash, decode_sdpa, pick_attention, prefill_attention
from inference.engine.kv_cache import RowKVCache
from inference.engine.lora_plan import LoraBatch
from inference.engine.transfers import Uploads

__all__ = ["ModelRunner", "RowKVCache", "UnsupportedModelError", "check_supported"]

SUPPORTED_MODEL_TYPES = ("llama",)


class UnsupportedModelError(ValueError):
    """A base model whose architecture this runner does not implement."""


def check_supported(model: PreTrainedModel) -> None:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"the engine runs {', '.join(SUPPORTED_MODEL_TYPES)} architectures, this base model is "
            f"{model_type!r}: use a Llama-architecture base model or the vllm backend"
        )


class ModelRunner:
    """Prefill and decode over persistent rows `[0, max_rows)` of `model` (a LlamaForCausalLM, possibly
    with MultiLoraLinear projections: `lora` then says which adapter each row uses)."""

    def __init__(
        self,
        model: PreTrainedModel,
        device: torch.device | str,
        max_rows: int,
        lora: LoraBatch | None = None,
        deterministic: bool = False,
        *,
        attention: str = "auto",
        uploads: Uploads | None = None,
    ) -> None:
        check_supported(model)
        self.model = model
        self.deterministic = deterministic
        self.hidden: list[torch.Tensor] = []  # per row of the last pass with record=True (bfloat16)
        self.device = torch.device(device)
        self.max_rows = max_rows
        self.lora = lora
        self.uploads = uploads or (lora.uploads if lora is not None else Uploads(self.device))
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
        like = next(model.parameters()).detach()
        self.attention = pick_attention(attention, self.device, like.dtype)
        self.cache = RowKVCache(
            len(self._layers),
            max_rows,
            self.kv_heads,
            self.head_dim,
            self.max_positions,
            like,
            position_major=self.attention == "flash_attn",
            bias_column=self.attention == "sdpa",
        )
        self.tokens = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # each row's next input
        self.lengths = torch.zeros(max_rows, dtype=torch.long, device=self.device)  # tokens in its cache
        self._aranges: dict[int, torch.Tensor] = {}

    @torch.inference_mode()
    def prefill(
        self, start: int, prompts: list[list[int]], all_logits: bool = False, record: bool = False
    ) -> torch.Tensor:
        """Prefill `prompts` into rows [start, start + len(prompts)). Returns the logits [rows, vocab] at
        each prompt's last token, or with `all_logits` [rows, T, vocab] (right padded: row i's first
        len(prompts[i]) positions are real). The rows' lengths become their prompts' lengths. `record`:
        `hidden[i]` is row i's [len(prompts[i]), H]."""
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
        ids = self.uploads.tensor([p + [0] * (t - len(p)) for p in prompts], torch.long)
        lengths = self.uploads.tensor([len(p) for p in prompts], torch.long)
        self.lengths[start : start + rows] = lengths
        positions = self._arange(t).expand(rows, t)
        if self.lora is not None:
            self.lora.set_window(start, start + rows)
        h = self._embed(ids)
        cos, sin = self._rotary(h, positions)
        d = self.head_dim
        for i, layer in enumerate(self._layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            self.cache.keys(i)[start : start + rows, :, :t, :d] = k
            self.cache.values(i)[start : start + rows, :, :t, :d] = v
            o = prefill_attention(self.attention, q, k, v, attn.scaling, self._gqa)
            h = self._finish_layer(layer, h, o)
        if record:
            normed = self._norm(h).to(torch.bfloat16)
            self.hidden = [normed[i, : len(p)] for i, p in enumerate(prompts)]
        self.cache.set_lengths(range(start, start + rows), [len(p) for p in prompts])
        if all_logits:
            return self.model.lm_head(self._norm(h))
        h = h[self._arange(rows), lengths - 1]
        return self.model.lm_head(self._norm(h))

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, lengths: list[int], record: bool = False) -> torch.Tensor:
        """One token per running row [0, n): row i's `tokens[i]` goes to position `lengths[i]`. Sets the
        rows' device state from these host values (uploads), then `decode_rows`."""
        n = len(lengths)
        self.tokens[:n] = self.uploads.tensor(tokens, torch.long)
        self.lengths[:n] = self.uploads.tensor(lengths, torch.long)
        return self.decode_rows(n, max(lengths) + 1, record)

    @torch.inference_mode()
    def decode_rows(self, n: int, width: int, record: bool = False) -> torch.Tensor:
        """One decode step of rows [0, n) from their device state: row i's `tokens[i]` goes to position
        `lengths[i]`; afterwards each length is one more. `width` is the longest row's length + 1 (the
        caller knows it: no device read). Returns logits [n, vocab]. Uploads nothing unless the LoRA rows
        changed since the last pass (their plan is then rebuilt once). `record`: `hidden[i]` is [H].
        In deterministic mode each row runs alone at its own width (one device read per row)."""
        if not self.deterministic or n == 1:
            return self._decode_rows(0, n, width, record)
        logits, hidden = [], []
        for i in range(n):
            logits.append(self._decode_rows(i, 1, int(self.lengths[i]) + 1, record))
            hidden += self.hidden if record else []
        self.hidden = hidden
        return torch.cat(logits)

    def _decode_rows(self, start: int, n: int, width: int, record: bool) -> torch.Tensor:
        """decode_rows for rows [start, start + n)."""
        pos = self.lengths[start : start + n]
        t = width
        self.cache.ensure(t)
        rows = self._arange(n) + start if start else self._arange(n)
        mask = None
        if self.attention == "sdpa_mask":
            mask = (self._arange(t).view(1, t) <= pos.view(n, 1)).view(n, 1, 1, t)
        elif self.attention == "sdpa":
            self.cache.mark_filled(rows, pos)
        seqlens = pos.to(torch.int32) if self.attention == "flash_attn" else None
        if self.lora is not None:
            self.lora.set_window(start, start + n)
        h = self._embed(self.tokens[start : start + n].view(n, 1))
        cos, sin = self._rotary(h, pos.view(n, 1))
        d = self.head_dim
        for i, layer in enumerate(self._layers):
            attn = layer.self_attn
            q, k, v = self._qkv(attn, layer.input_layernorm(h), cos, sin)
            if seqlens is not None:
                o = decode_flash(q, k, v, self.cache, i, n, seqlens, attn.scaling, start=start)
            else:
                self.cache.keys(i)[rows, :, pos, :d] = k[:, :, 0]
                self.cache.values(i)[rows, :, pos, :d] = v[:, :, 0]
                o = decode_sdpa(self.attention, q, self.cache, i, n, t, attn.scaling, mask, start=start)
            h = self._finish_layer(layer, h, o)
        self.lengths[start : start + n] += 1
        normed = self._norm(h)
        if record:
            self.hidden = list(normed[:, 0].to(torch.bfloat16).unbind(0))
        return self.model.lm_head(normed)[:, 0]

    @torch.inference_mode()  # a cache grown inside a pass holds inference tensors: copy in that mode too
    def move_row(self, src: int, dst: int, length: int) -> None:
        """Row `src` (with `length` cached tokens) continues as row `dst`."""
        self.cache.move_row(src, dst, length)
        self.tokens[dst] = self.tokens[src]
        self.lengths[dst] = self.lengths[src]
        if self.lora is not None:
            self.lora.move_row(src, dst)

    def _arange(self, n: int) -> torch.Tensor:
        if n not in self._aranges:
            self._aranges[n] = torch.arange(n, device=self.device)
        return self._aranges[n]

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
