"""A small, honest LoRA trainer (PEFT, CPU-friendly) for demo and test adapters.

Each example is a (prompt, answer) pair. The prompt goes through `inference.prompt.encode_prompt`, exactly as
at serving time, and the answer tokens plus the end-of-turn token follow it; the loss covers only the answer
tokens and the end-of-turn token (so the adapter also learns where to stop). The output is a standard PEFT
folder (adapter_config.json + adapter_model.safetensors) that `PeftModel.from_pretrained` and the node's
validator accept. Same inputs and seed give the same adapter.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from inference.models import LoadedModel
from inference.prompt import encode_prompt

IGNORE_INDEX = -100
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class TrainingExample:
    """One tokenized example: the full sequence and the labels (IGNORE_INDEX on the prompt)."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class StepLog:
    step: int
    loss: float  # mean cross-entropy over the answer tokens of this step's batch


def tokenize_example(base: LoadedModel, prompt: str, answer: str) -> TrainingExample:
    """Prompt ids as served (chat template + generation prompt), then answer ids and the eos token."""
    tok = base.tokenizer
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer of {base.name!r} has no eos token: training could not teach it to stop")
    if not answer:
        raise ValueError(f"empty answer for prompt {prompt!r}: every example needs an answer to learn")
    prompt_ids = encode_prompt(tok, prompt)
    answer_ids = [int(i) for i in tok(answer, add_special_tokens=False)["input_ids"]]
    answer_ids.append(int(tok.eos_token_id))
    return TrainingExample(prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids)


def collate(batch: Sequence[TrainingExample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_lora(
    base: LoadedModel,
    examples: Sequence[tuple[str, str]],
    out_dir: Path,
    *,
    rank: int = 8,
    alpha: int = 16,
    targets: Sequence[str] = DEFAULT_TARGETS,
    steps: int = 60,
    lr: float = 2e-3,
    batch_size: int = 8,
    seed: int = 0,
    layers: Sequence[int] | None = None,
    on_step: Callable[[StepLog], None] | None = None,
) -> Path:
    """Train a LoRA adapter on (prompt, answer) pairs and save it as a PEFT folder at `out_dir`.

    The base model is not modified (training runs on a copy). `steps` optimizer steps of `batch_size`
    examples each, drawn by a seeded shuffle that cycles through the data; AdamW with linear warm-up over
    the first 10% of steps and linear decay. `layers` limits LoRA to those decoder layers (PEFT's
    `layers_to_transform`); adapting only the top layers makes training cheaper, since the backward pass
    stops at the lowest adapted layer. `on_step` receives every step's loss. `out_dir` appears atomically;
    an existing folder there is replaced."""
    if not examples:
        raise ValueError("no training examples: pass at least one (prompt, answer) pair")
    if rank < 1 or steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(
            f"rank, steps and batch_size must be >= 1 and lr > 0 (got {rank}, {steps}, {batch_size}, {lr})"
        )
    if not targets:
        raise ValueError("no target modules: name the linear layers to adapt, e.g. ('q_proj', 'v_proj')")
    n_layers = getattr(base.model.config, "num_hidden_layers", None)
    if layers is not None and (not layers or (n_layers and not all(0 <= i < n_layers for i in layers))):
        raise ValueError(
            f"layers must be a non-empty list of decoder layer numbers in [0, {n_layers}), got {layers}"
        )
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    data = [tokenize_example(base, p, a) for p, a in examples]
    out_dir = Path(out_dir)

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # LoRA A init and the data order depend only on the seed
        model = copy.deepcopy(base.model)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=list(targets),
            lora_dropout=0.0,
            bias="none",
            task_type="CAUSAL_LM",
            layers_to_transform=sorted(set(layers)) if layers is not None else None,
        )
        peft_model = get_peft_model(model, config)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)),
        )
        order_gen = torch.Generator().manual_seed(seed)
        order: list[int] = []
        peft_model.train()
        for step in range(steps):
            batch = []
            while len(batch) < min(batch_size, len(data)):
                if not order:
                    order = torch.randperm(len(data), generator=order_gen).tolist()
                batch.append(data[order.pop()])
            loss = answer_loss(peft_model, collate(batch, pad_id))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if on_step is not None:
                on_step(StepLog(step, float(loss.detach())))
        peft_model.eval()
    _save_atomically(peft_model, base.name, out_dir)
    return out_dir


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions. Logits are computed only at the positions
    that predict a label (`logits_to_keep` with indices): the prompt, often half the tokens, never goes
    through the vocabulary projection, which is a large part of a small model's compute."""
    labels = batch["labels"]
    predicts = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    keep = predicts.any(dim=0).nonzero().squeeze(1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    targets = labels[:, 1:].index_select(1, keep)
    return torch.nn.functional.cross_entropy(
        out.logits.float().reshape(-1, out.logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
    )


def _save_atomically(peft_model, base_name: str, out_dir: Path) -> None:  # type: ignore[no-untyped-def]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as tmp:
        staged = Path(tmp) / "adapter"
        peft_model.save_pretrained(str(staged), safe_serialization=True)
        (staged / "README.md").unlink(missing_ok=True)  # PEFT's hub model-card boilerplate
        cfg_path = staged / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = base_name  # a name the node resolves, not a local path
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            os.replace(out_dir, Path(tmp) / "stale")
        os.replace(staged, out_dir)
