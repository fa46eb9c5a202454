"""Reference generation with PEFT: the correctness oracle for the engine (greedy, one request)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel

from inference.models import LoadedModel
from inference.prompt import decode_output, encode_prompt


@dataclass(frozen=True)
class ReferenceOutput:
    text: str
    token_ids: list[int]


def peft_generate(
    base: LoadedModel, adapter_dir: Path | None, prompt: str, max_tokens: int, *, chat: bool = True
) -> ReferenceOutput:
    """Greedy generation of `prompt` through PEFT's PeftModel with the adapter in `adapter_dir`
    (safetensors only), or through the bare base model when `adapter_dir` is None."""
    model = base.model
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(adapter_dir), use_safetensors=True)
    model.eval()
    ids = encode_prompt(base.tokenizer, prompt, chat=chat)
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=base.tokenizer.eos_token_id,
            pad_token_id=base.tokenizer.pad_token_id,
        )
    new = [int(t) for t in out[0, len(ids) :]]
    if new and new[-1] == base.tokenizer.eos_token_id:
        new = new[:-1]
    return ReferenceOutput(decode_output(base.tokenizer, new), new)
