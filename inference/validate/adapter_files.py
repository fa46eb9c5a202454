"""Admission of an untrusted PEFT LoRA adapter: files, config, container, names and shapes against the
base model; only then are tensors read (by safetensors, never pickle) and scanned for bad values."""

from __future__ import annotations

import errno
import math
import os
import stat
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from inference.adapter import AdapterWeights, adapter_weights_from_state_dict, parse_peft_key
from inference.validate.adapter_config import CONFIG_FILE, LoraAdapterConfig, parse_adapter_config
from inference.validate.base_spec import BaseModelSpec
from inference.validate.errors import AdapterRejected, Reason, brief
from inference.validate.limits import DEFAULT_LIMITS, ValidationLimits
from inference.validate.safetensors_header import SafetensorsHeader, parse_safetensors_header

WEIGHTS_FILE = "adapter_model.safetensors"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
IGNORED_FILES = frozenset({"README.md"})  # PEFT's save_pretrained writes a model card; it is never read
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
MAX_DIR_ENTRIES = 16


def looks_like_pickle(data: bytes | memoryview) -> bool:
    """torch.save output (a zip holding data.pkl) or a raw pickle of protocol 2 to 5.
    A real safetensors file has '{' at byte 8, which tells it apart from a header length that happens
    to start with the pickle magic byte 0x80."""
    head = bytes(data[:9])
    if head.startswith(b"PK\x03\x04"):
        return True
    pickle_magic = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    return pickle_magic and head[8:9] != b"{"


def _pickle_rejection(name: str) -> AdapterRejected:
    return AdapterRejected(
        Reason.PICKLE,
        f"{name} is a pickle / torch.save file, which can run code when loaded and is never opened; "
        f"publish {WEIGHTS_FILE} (PEFT save_pretrained(..., safe_serialization=True))",
    )


def _check_file_names(names: list[str]) -> None:
    for name in names:
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise _pickle_rejection(name)
    unexpected = sorted(n for n in names if n not in REQUIRED_FILES and n not in IGNORED_FILES)
    if unexpected:
        raise AdapterRejected(
            Reason.UNEXPECTED_FILE,
            f"unexpected file(s) {unexpected[:5]}: an adapter is exactly {list(REQUIRED_FILES)}",
        )
    missing = [n for n in REQUIRED_FILES if n not in names]
    if missing:
        raise AdapterRejected(
            Reason.MISSING_FILE, f"adapter has no {missing[0]}; it needs {list(REQUIRED_FILES)}"
        )


def validate_adapter_files(
    files: Mapping[str, bytes], base: BaseModelSpec, limits: ValidationLimits = DEFAULT_LIMITS
) -> AdapterWeights:
    """Validate an adapter given as {file name: bytes} (e.g. from the IPFS fetcher) and return its
    weights as float32. Raises AdapterRejected; never lets a malformed file raise anything else."""
    _check_file_names(list(files))
    config = parse_adapter_config(files[CONFIG_FILE], limits=limits)
    _check_targets_exist(config, base)
    weights = files[WEIGHTS_FILE]
    if looks_like_pickle(weights):
        raise _pickle_rejection(WEIGHTS_FILE)
    header = parse_safetensors_header(weights, limits=limits)
    if header.gaps:
        begin, end = header.gaps[0]
        raise AdapterRejected(
            Reason.DATA_GAP,
            f"{WEIGHTS_FILE}: {header.unused_bytes:,} bytes of the data section belong to no tensor "
            f"(first at [{begin}, {end}]); safetensors files are packed",
        )
    _check_tensor_names_and_shapes(header, config, base)
    tensors = _load_tensors(weights, header)
    _check_values(tensors, config, limits)
    return adapter_weights_from_state_dict(config.as_peft_dict(), tensors)


def validate_adapter_dir(
    path: Path, base: BaseModelSpec, limits: ValidationLimits = DEFAULT_LIMITS
) -> AdapterWeights:
    """Validate an adapter folder. File sizes are checked before anything is read; symlinks, folders
    and pickle files are refused without being opened."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterRejected(Reason.MISSING_FILE, f"{path} is not a folder")
    with os.scandir(path) as it:
        entries = []
        for entry in it:
            entries.append(entry)
            if len(entries) > MAX_DIR_ENTRIES:
                raise AdapterRejected(
                    Reason.UNEXPECTED_FILE, f"{path} holds more than {MAX_DIR_ENTRIES} entries"
                )
    _check_file_names([e.name for e in entries])
    files: dict[str, bytes] = {}
    size_limits = {CONFIG_FILE: limits.max_config_bytes, WEIGHTS_FILE: limits.max_file_bytes}
    for entry in entries:
        if entry.name not in size_limits:
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise AdapterRejected(
                Reason.UNEXPECTED_FILE, f"{entry.path} is not a regular file (link or folder?)"
            )
        if st.st_size > size_limits[entry.name]:
            raise AdapterRejected(
                Reason.FILE_TOO_LARGE,
                f"{entry.name} is {st.st_size:,} bytes; the limit is {size_limits[entry.name]:,}",
            )
        # O_NOFOLLOW: a link swapped in after the lstat above is refused by the kernel, not followed.
        # Other OSErrors are the operator's disk, not the adapter's fault: they propagate.
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise AdapterRejected(Reason.UNEXPECTED_FILE, f"{entry.path} became a link") from None
        with os.fdopen(fd, "rb") as f:
            # at most one byte over the limit, in case the file grew since stat
            files[entry.name] = f.read(size_limits[entry.name] + 1)
    return validate_adapter_files(files, base, limits)


def _check_targets_exist(config: LoraAdapterConfig, base: BaseModelSpec) -> None:
    missing = sorted(set(config.target_modules) - base.short_names())
    if missing:
        raise AdapterRejected(
            Reason.UNKNOWN_TARGET_MODULE,
            f"{CONFIG_FILE}: target_modules {missing} do not exist in base model {base.name!r}",
        )


def _check_tensor_names_and_shapes(
    header: SafetensorsHeader, config: LoraAdapterConfig, base: BaseModelSpec
) -> None:
    seen: dict[tuple[str, str], str] = {}
    for name, entry in header.tensors.items():
        try:
            module, ab = parse_peft_key(name)
        except ValueError:
            raise AdapterRejected(
                Reason.UNKNOWN_TENSOR,
                f"tensor {brief(name)} is not a LoRA weight "
                "(expected base_model.model.<module path>.lora_A.weight / lora_B.weight)",
            ) from None
        if module not in base.modules:
            raise AdapterRejected(
                Reason.UNKNOWN_TARGET_MODULE,
                f"tensor {brief(name)} targets {brief(module)}, which base model {base.name!r} does not have",
            )
        if not config.targets(module):
            raise AdapterRejected(
                Reason.UNKNOWN_TARGET_MODULE,
                f"tensor {brief(name)} targets {brief(module)}, which the config does not target "
                f"(target_modules {list(config.target_modules)}, layers_to_transform, exclude_modules)",
            )
        if (module, ab) in seen:
            raise AdapterRejected(
                Reason.DUPLICATE_TENSOR,
                f"tensors {brief(seen[(module, ab)])} and {brief(name)} "
                f"are both lora_{ab} of {brief(module)}",
            )
        seen[(module, ab)] = name
        _check_shape(name, entry.shape, ab, base.modules[module], config.rank)

    expected = {m for m in base.modules if config.targets(m)}
    missing = sorted(f"{m}.lora_{ab}" for m in expected for ab in "AB" if (m, ab) not in seen)
    if missing:
        raise AdapterRejected(
            Reason.MISSING_TENSOR,
            f"{len(missing)} LoRA weight(s) the config targets are missing, e.g. {missing[:3]}",
        )


def _check_shape(name: str, shape: tuple[int, ...], ab: str, in_out: tuple[int, int], rank: int) -> None:
    in_features, out_features = in_out
    expected = (rank, in_features) if ab == "A" else (out_features, rank)
    if shape == expected:
        return
    if len(shape) != 2:
        raise AdapterRejected(
            Reason.SHAPE_MISMATCH, f"tensor {brief(name)} has shape {list(shape)}; expected {list(expected)}"
        )
    got_rank = shape[0] if ab == "A" else shape[1]
    if got_rank != rank:
        raise AdapterRejected(
            Reason.RANK_MISMATCH,
            f"tensor {brief(name)} has rank {got_rank} (shape {list(shape)}) but the config says r = {rank}; "
            "per-module ranks (rank_pattern) are not supported",
        )
    raise AdapterRejected(
        Reason.SHAPE_MISMATCH,
        f"tensor {brief(name)} has shape {list(shape)}; the base module is {in_features} -> {out_features}, "
        f"so lora_{ab} must be {list(expected)}",
    )


def _load_tensors(data: bytes | memoryview, header: SafetensorsHeader) -> dict[str, torch.Tensor]:
    try:
        tensors = load_safetensors(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        # Our header checks are stricter than the loader's, so this is a bug or a new loader rule.
        raise AdapterRejected(
            Reason.BAD_SAFETENSORS, f"{WEIGHTS_FILE}: safetensors refused it: {e}"
        ) from None
    if set(tensors) != set(header.tensors):
        raise AdapterRejected(
            Reason.BAD_SAFETENSORS, f"{WEIGHTS_FILE}: loaded tensors differ from the header"
        )
    return {name: t.to(torch.float32) for name, t in tensors.items()}


def _check_values(
    tensors: dict[str, torch.Tensor], config: LoraAdapterConfig, limits: ValidationLimits
) -> None:
    for name, t in tensors.items():
        # max |x| propagates NaN and Inf, so one pass answers both questions on the normal path
        peak = float(t.abs().amax()) if t.numel() else 0.0
        if not math.isfinite(peak):
            bad = int((~torch.isfinite(t)).sum())
            raise AdapterRejected(Reason.NON_FINITE, f"tensor {brief(name)} has {bad:,} NaN/Inf value(s)")
        if peak > limits.max_abs_value:
            raise AdapterRejected(
                Reason.NORM_TOO_LARGE,
                f"tensor {brief(name)} has a value of magnitude {peak:.3g}; "
                f"the limit is {limits.max_abs_value:g}",
            )
        # every |x| <= max_abs_value here, so float32 cannot overflow
        norm = float(torch.linalg.vector_norm(t))
        if norm > limits.max_tensor_norm:
            raise AdapterRejected(
                Reason.NORM_TOO_LARGE,
                f"tensor {brief(name)} has Frobenius norm {norm:.3g}; "
                f"the limit is {limits.max_tensor_norm:g}",
            )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for name, t in tensors.items():
        module, ab = parse_peft_key(name)
        pairs.setdefault(module, {})[ab] = t
    for module, pair in pairs.items():
        norm = config.scale * _product_norm(pair["B"], pair["A"])
        if norm > limits.max_delta_norm:
            raise AdapterRejected(
                Reason.NORM_TOO_LARGE,
                f"module {brief(module)}: the weight change scale * B @ A has Frobenius norm {norm:.3g}; "
                f"the limit is {limits.max_delta_norm:g}",
            )


def _product_norm(b: torch.Tensor, a: torch.Tensor) -> float:
    """||B @ A||_F without forming the [out, in] product: sqrt(sum((A A^T) * (B^T B))), r x r only."""
    squared = float(((a @ a.T) * (b.T @ b)).sum(dtype=torch.float64))
    return max(squared, 0.0) ** 0.5
