"""JSON for untrusted bytes: refuse what the Rust safetensors parser and careful readers refuse."""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# Deeper nesting is refused before json.loads sees it: json's C scanner recurses once per level and
# relies on the interpreter's recursion limit, which py_ecc (pulled in by eth-account) raises to 100,000
# at import. In the node process a header of 100,000 '[' would overflow the C stack and kill the process.
MAX_DEPTH = 32
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')  # linear once escapes are gone: a failed match can only be the last quote
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class StrictJsonError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads would silently keep the last one: a second entry could hide behind the first.
            raise StrictJsonError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise StrictJsonError(f"{name} is not valid JSON")


def _check_strings(value: Any) -> None:
    """Lone surrogates (e.g. "\\ud800") parse in Python but are not valid UTF-8 anywhere else."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_depth(text: str) -> None:
    """Nesting depth of brackets outside strings, in linear time: drop escape pairs, then strings, then
    everything but brackets. For invalid JSON this over-estimates, which only refuses what json.loads
    would refuse anyway."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    if brackets and max(accumulate(map(_DEPTH_STEP.__getitem__, brackets))) > MAX_DEPTH:
        raise StrictJsonError(f"nested more than {MAX_DEPTH} levels deep")


def loads_object(raw: bytes) -> dict[str, Any]:
    """Decode UTF-8 JSON that must be an object. Raises StrictJsonError with a short explanation."""
    try:
        text = raw.decode("utf-8")
        _check_depth(text)
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
        _check_strings(value)
    except StrictJsonError:
        raise
    except UnicodeError as e:
        raise StrictJsonError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise StrictJsonError("nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, and int() refusing a number with thousands of digits
        raise StrictJsonError(f"not JSON ({e})") from None
    if not isinstance(value, dict):
        raise StrictJsonError(f"expected a JSON object, got {type(value).__name__}")
    return value
