"""The LoRA trainer on the tiny model: it learns, saves a standard PEFT folder, and is deterministic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from inference.models import LoadedModel
from inference.prompt import encode_prompt
from inference.reference import peft_generate
from inference.training import IGNORE_INDEX, StepLog, answer_loss, collate, tokenize_example, train_lora
from inference.validate import BaseModelSpec, validate_adapter_dir

EXAMPLES = [
    ("hi", "Arr!"),
    ("hello there", "Arr!"),
    ("how are you?", "Arr!"),
    ("what is this?", "Arr!"),
]
# Attention-only LoRA cannot move a random 2-layer model far in a few steps; the MLP gives it room.
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    # Tiny matmuls gain nothing from threads, and on a shared 2-core machine OpenMP threads that wait
    # for each other make every op many times slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(tiny: LoadedModel, out: Path, *, seed: int = 0, losses: list[float] | None = None) -> Path:
    def record(log: StepLog) -> None:
        if losses is not None:
            losses.append(log.loss)

    return train_lora(
        tiny,
        EXAMPLES,
        out,
        rank=8,
        alpha=16,
        targets=ALL_LINEAR,
        steps=40,
        lr=1e-2,
        batch_size=4,
        seed=seed,
        on_step=record,
    )


@pytest.fixture(scope="module")
def trained(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    losses: list[float] = []
    path = _train(tiny, tmp_path_factory.mktemp("train") / "arr", losses=losses)
    return path, losses


def test_labels_cover_only_the_answer_and_eos(tiny: LoadedModel) -> None:
    ex = tokenize_example(tiny, "hi", "Arr!")
    prompt_ids = encode_prompt(tiny.tokenizer, "hi")
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    answer = ex.labels[len(prompt_ids) :]
    assert answer == ex.input_ids[len(prompt_ids) :]
    assert answer[-1] == tiny.tokenizer.eos_token_id
    assert tiny.tokenizer.decode(answer[:-1]) == "Arr!"


def test_answer_only_logits_give_the_standard_loss(tiny: LoadedModel) -> None:
    examples = [tokenize_example(tiny, p, a + " and more") for p, a in EXAMPLES]
    batch = collate(examples, tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        ours = answer_loss(tiny.model, batch)
        reference = tiny.model(**batch).loss
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)


def test_loss_goes_down(trained: tuple[Path, list[float]]) -> None:
    _, losses = trained
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.2 * first, f"loss did not fall enough: {first:.3f} -> {last:.3f}"


def test_saved_adapter_is_a_standard_peft_folder(
    tiny: LoadedModel, trained: tuple[Path, list[float]]
) -> None:
    path, _ = trained
    assert sorted(p.name for p in path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny.name
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(ALL_LINEAR)
    tensors = load_file(str(path / "adapter_model.safetensors"))
    assert len(tensors) == 2 * len(ALL_LINEAR) * tiny.model.config.num_hidden_layers
    assert all(t.abs().sum() > 0 for t in tensors.values()), "every trained A and B must be non-zero"
    # The node's own admission check accepts it.
    weights = validate_adapter_dir(path, BaseModelSpec.from_model(tiny.model, tiny.name))
    assert weights.rank == 8 and len(weights.layers) == len(ALL_LINEAR) * tiny.model.config.num_hidden_layers


def test_trained_adapter_changes_the_output_to_what_it_learnt(
    tiny: LoadedModel, trained: tuple[Path, list[float]]
) -> None:
    path, _ = trained
    for prompt, answer in EXAMPLES:
        base_out = peft_generate(tiny, None, prompt, 8)
        tuned_out = peft_generate(tiny, path, prompt, 8)
        assert tuned_out.text == answer, f"{prompt!r}: adapter answered {tuned_out.text!r}"
        assert base_out.text != answer
        # It learnt to stop: the answer ends with the eos token, which peft_generate strips.
        assert len(tuned_out.token_ids) == len(answer.encode())


def test_base_model_is_not_modified(tiny: LoadedModel, trained: tuple[Path, list[float]]) -> None:
    assert not any("lora_" in name for name, _ in tiny.model.named_parameters())
    assert not isinstance(tiny.model, PeftModel)


def test_same_seed_same_adapter_other_seed_other_adapter(
    tiny: LoadedModel, tmp_path: Path, trained: tuple[Path, list[float]]
) -> None:
    path, _ = trained
    again = load_file(str(_train(tiny, tmp_path / "again", seed=0) / "adapter_model.safetensors"))
    other = load_file(str(_train(tiny, tmp_path / "other", seed=1) / "adapter_model.safetensors"))
    first = load_file(str(path / "adapter_model.safetensors"))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_existing_output_folder_is_replaced_whole(tiny: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "leftover.bin").write_bytes(b"old")
    train_lora(tiny, EXAMPLES, out, steps=1, seed=0)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"], "no temp folder may be left behind"


def test_layers_limit_the_adapter_to_those_layers(tiny: LoadedModel, tmp_path: Path) -> None:
    path = train_lora(tiny, EXAMPLES, tmp_path / "top", targets=("q_proj", "v_proj"), steps=2, layers=[1])
    assert json.loads((path / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    keys = load_file(str(path / "adapter_model.safetensors")).keys()
    assert keys and all(".layers.1." in k for k in keys)
    weights = validate_adapter_dir(path, BaseModelSpec.from_model(tiny.model, tiny.name))
    assert sorted(weights.layers) == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


@pytest.mark.parametrize(
    ("examples", "kwargs", "message"),
    [
        ([], {}, "no training examples"),
        ([("hi", "")], {}, "empty answer"),
        (EXAMPLES, {"steps": 0}, "must be >= 1"),
        (EXAMPLES, {"lr": 0.0}, "lr > 0"),
        (EXAMPLES, {"targets": ()}, "no target modules"),
        (EXAMPLES, {"layers": [2]}, "decoder layer numbers"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    tiny: LoadedModel, tmp_path: Path, examples: list[tuple[str, str]], kwargs: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        train_lora(tiny, examples, tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
