"""Readable names for contract reverts: custom errors decoded with the ABI."""

from __future__ import annotations

from eth_abi import decode
from eth_utils import function_signature_to_4byte_selector

from chain.artifacts import CONTRACT_NAMES, load_artifact


def _error_table() -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for name in CONTRACT_NAMES:
        for entry in load_artifact(name).abi:
            if entry.get("type") == "error":
                types = [i["type"] for i in entry.get("inputs", [])]
                sig = f"{entry['name']}({','.join(types)})"
                table[function_signature_to_4byte_selector(sig)] = (entry["name"], types)
    return table


_TABLE: dict[bytes, tuple[str, list[str]]] | None = None


def describe_revert(data: str | bytes | None) -> str:
    """'0x1234…' revert data -> 'JobNotOpen(7)' (or the raw data when unknown)."""
    global _TABLE
    if data is None:
        return "reverted without data"
    raw = bytes.fromhex(data[2:] if data.startswith("0x") else data) if isinstance(data, str) else data
    if len(raw) < 4:
        return "reverted without data"
    if _TABLE is None:
        _TABLE = _error_table()
    if raw[:4] == bytes.fromhex("08c379a0"):  # Error(string)
        return decode(["string"], raw[4:])[0]
    known = _TABLE.get(raw[:4])
    if not known:
        return f"unknown revert 0x{raw.hex()}"
    name, types = known
    try:
        args = decode(types, raw[4:]) if types else ()
    except Exception:
        args = ()
    return f"{name}({', '.join(str(a) for a in args)})"
