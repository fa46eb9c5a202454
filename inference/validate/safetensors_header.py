"""Parse a safetensors header by hand, with limits, before a single tensor byte is read.

Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data section. The JSON maps
tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data section)
plus an optional "__metadata__" of string to string.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

from inference.validate.errors import AdapterRejected, Reason, brief
from inference.validate.limits import DEFAULT_LIMITS, DTYPE_ITEMSIZE, ValidationLimits
from inference.validate.strict_json import StrictJsonError, loads_object

METADATA_KEY = "__metadata__"
MAX_NDIM = 8
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the start of the data section
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int  # N, the JSON length
    file_size: int
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str] = field(default_factory=dict)
    # Byte ranges of the data section that no tensor covers (between tensors, or after the last one).
    # The format allows nothing there; they are reported here and refused by adapter validation.
    gaps: tuple[tuple[int, int], ...] = ()

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def data_size(self) -> int:
        return self.file_size - self.data_start

    @property
    def unused_bytes(self) -> int:
        return sum(end - begin for begin, end in self.gaps)


def _reject(reason: Reason, message: str) -> AdapterRejected:
    return AdapterRejected(reason, message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_safetensors_header(
    data: bytes | bytearray | memoryview, *, limits: ValidationLimits = DEFAULT_LIMITS
) -> SafetensorsHeader:
    """Check the container of a whole safetensors file without reading tensor data.
    Raises AdapterRejected with the first problem found."""
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = memoryview(view.tobytes())
    size = view.nbytes
    if size > limits.max_file_bytes:
        raise _reject(
            Reason.FILE_TOO_LARGE, f"file is {size:,} bytes; the limit is {limits.max_file_bytes:,}"
        )
    if size < 8:
        raise _reject(Reason.TRUNCATED, f"file is {size} bytes: too short for the 8-byte header length")
    (header_len,) = struct.unpack_from("<Q", view, 0)
    if header_len > limits.max_header_bytes:
        raise _reject(
            Reason.HEADER_TOO_LARGE,
            f"header claims {header_len:,} bytes; the limit is {limits.max_header_bytes:,}",
        )
    if header_len > size - 8:
        raise _reject(
            Reason.TRUNCATED,
            f"header claims {header_len:,} bytes but only {size - 8:,} follow: truncated file?",
        )
    raw = bytes(view[8 : 8 + header_len])
    if not raw.startswith(b"{"):
        raise _reject(Reason.BAD_HEADER, "header does not start with '{': not a safetensors file")
    try:
        obj = loads_object(raw)
    except StrictJsonError as e:
        raise _reject(Reason.BAD_HEADER, f"header JSON: {e}") from None

    metadata = _parse_metadata(obj.pop(METADATA_KEY, {}))
    if len(obj) > limits.max_tensors:
        raise _reject(
            Reason.TOO_MANY_TENSORS, f"header lists {len(obj):,} tensors; the limit is {limits.max_tensors:,}"
        )
    data_size = size - 8 - header_len
    tensors = {name: _parse_entry(name, info, data_size, limits) for name, info in obj.items()}
    gaps = _check_layout(tensors.values(), data_size)
    return SafetensorsHeader(
        header_len=header_len, file_size=size, tensors=tensors, metadata=metadata, gaps=gaps
    )


def _parse_metadata(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _reject(Reason.BAD_HEADER, f"{METADATA_KEY} must map strings to strings")
    return value


def _parse_entry(name: str, info: Any, data_size: int, limits: ValidationLimits) -> TensorEntry:
    if not isinstance(info, dict) or set(info) != _ENTRY_KEYS:
        got = brief(sorted(info)) if isinstance(info, dict) else type(info).__name__
        raise _reject(
            Reason.BAD_HEADER, f"tensor {brief(name)}: expected keys {sorted(_ENTRY_KEYS)}, got {got}"
        )
    dtype = info["dtype"]
    if not isinstance(dtype, str):
        raise _reject(Reason.BAD_HEADER, f"tensor {brief(name)}: dtype must be a string, got {brief(dtype)}")
    if dtype not in limits.allowed_dtypes:
        raise _reject(
            Reason.BAD_DTYPE,
            f"tensor {brief(name)} has dtype {brief(dtype, 24)}; "
            f"allowed: {', '.join(sorted(limits.allowed_dtypes))}",
        )
    shape = info["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise _reject(
            Reason.BAD_HEADER,
            f"tensor {brief(name)}: shape must be a list of at most {MAX_NDIM} non-negative integers",
        )
    nbytes = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if nbytes > limits.max_file_bytes:
        raise _reject(
            Reason.FILE_TOO_LARGE,
            f"tensor {brief(name)} declares shape {brief(shape)} of {dtype} = {nbytes:,} bytes; "
            f"the file limit is {limits.max_file_bytes:,}",
        )
    offsets = info["data_offsets"]
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(o) for o in offsets)
        and 0 <= offsets[0] <= offsets[1]
    ):
        raise _reject(
            Reason.BAD_HEADER,
            f"tensor {brief(name)}: data_offsets must be [begin, end] with 0 <= begin <= end",
        )
    begin, end = offsets
    if end - begin != nbytes:
        raise _reject(
            Reason.SIZE_MISMATCH,
            f"tensor {brief(name)}: shape {brief(shape)} of {dtype} needs {nbytes:,} bytes but data_offsets "
            f"[{begin}, {end}] span {end - begin:,}",
        )
    if end > data_size:
        raise _reject(
            Reason.OFFSET_OUT_OF_BOUNDS,
            f"tensor {brief(name)}: data_offsets end {end:,} is past the end of the data section "
            f"({data_size:,} bytes): truncated or forged file",
        )
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_layout(entries: Any, data_size: int) -> tuple[tuple[int, int], ...]:
    """Refuse overlapping tensors (one byte read as two tensors); return the uncovered ranges."""
    gaps: list[tuple[int, int]] = []
    cursor = 0
    previous: TensorEntry | None = None
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):
        if previous is not None and entry.begin < cursor:
            raise _reject(
                Reason.OVERLAPPING_OFFSETS,
                f"tensors {brief(previous.name)} [{previous.begin}, {previous.end}] and "
                f"{brief(entry.name)} [{entry.begin}, {entry.end}] share bytes",
            )
        if entry.begin > cursor:
            gaps.append((cursor, entry.begin))
        cursor = max(cursor, entry.end)
        previous = entry
    if cursor < data_size:
        gaps.append((cursor, data_size))
    return tuple(gaps)
