"""Base models the node can serve, resolved by name, never downloaded from a hub at run time.

`tiny-llama` is a seeded, randomly initialised Llama with a byte-level tokenizer: tests use it.
`smollm2-135m-instruct` is the embedded default (see `inference/embedded.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from eth_utils import keccak
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

TINY_LLAMA = "tiny-llama"
SMOLLM2 = "smollm2-135m-instruct"

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast

    @property
    def base_model_id(self) -> bytes:
        return base_model_id(self.name)


def base_model_id(name: str) -> bytes:
    """The bytes32 that identifies a base model on chain: keccak256 of its name."""
    return keccak(text=name)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 byte tokens + 3 specials) built in memory: no files, no hub."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for s in specials:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_llama(seed: int = 0, *, hidden: int = 64, layers: int = 2, heads: int = 4) -> LoadedModel:
    """A tiny random Llama (fp32, eval mode) whose weights depend only on `seed`."""
    tokenizer = byte_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # Default init is tiny (std 0.02): scale up so greedy decoding is not a wall of ties.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, 0.2)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(TINY_LLAMA, model, tokenizer)


def load_base_model(name: str, *, seed: int = 0) -> LoadedModel:
    """Resolve a base model by name. Raises ValueError naming the known models."""
    if name == TINY_LLAMA:
        return tiny_llama(seed)
    if name == SMOLLM2:
        from inference.embedded import load_smollm2

        return load_smollm2()
    raise ValueError(f"unknown base model {name!r}: use one of {TINY_LLAMA!r}, {SMOLLM2!r}")


def model_name_for_id(model_id: bytes, name: str | None = None) -> str:
    """The known base model whose id (keccak of its name, as job terms carry it) is `model_id`; `name`
    restricts the search to that one. ValueError naming the candidates otherwise."""
    candidates = [name] if name else [SMOLLM2, TINY_LLAMA]
    for candidate in candidates:
        if base_model_id(candidate) == model_id:
            return candidate
    raise ValueError(
        f"base model id 0x{model_id.hex()} is none of {', '.join(candidates)}: name the model explicitly"
    )
