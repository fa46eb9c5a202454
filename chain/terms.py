"""A job's terms (protocol v2): emitted once in JobSubmitted, re-supplied by every later call, hashed on
chain.

The market stores only a 192-bit prefix of `Terms.hash()`; a claim, result, release, reclaim, expiry or
dispute names the exact job by giving the terms again. This module is the one place that knows their ABI
shape, hash and money split; the node, SDK and CLI ask it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

BPS = 10_000
ADAPTER_TERM_ABI = "(uint32,uint16,uint96,bytes32)"
TERMS_ABI = f"(uint64,address,uint96,uint40,uint40,uint32,uint32,uint16,bytes32,bytes32,{ADAPTER_TERM_ABI}[])"


@dataclass(frozen=True)
class AdapterTerm:
    id: int
    weight_bps: int
    fee: int
    content_hash: bytes

    def as_abi(self) -> tuple:
        return (self.id, self.weight_bps, self.fee, self.content_hash)


@dataclass(frozen=True)
class Terms:
    job_id: int
    submitter: str
    price: int
    submitted_at: int
    deadline: int
    service_window: int
    max_tokens: int
    protocol_fee_bps: int
    base_model: bytes
    input_hash: bytes
    adapters: tuple[AdapterTerm, ...]

    # ---- ABI ----
    def as_abi(self) -> tuple:
        """The tuple web3 encodes as the `Terms` struct argument."""
        return (
            self.job_id,
            to_checksum_address(self.submitter),
            self.price,
            self.submitted_at,
            self.deadline,
            self.service_window,
            self.max_tokens,
            self.protocol_fee_bps,
            self.base_model,
            self.input_hash,
            [a.as_abi() for a in self.adapters],
        )

    @classmethod
    def from_abi(cls, t: Any) -> Terms:
        """From a decoded struct: a tuple in ABI order, or web3's dict/AttributeDict keyed by field name."""
        if isinstance(t, dict) or hasattr(t, "keys"):
            adapters = tuple(
                AdapterTerm(a["id"], a["weightBps"], a["fee"], bytes(a["contentHash"])) for a in t["adapters"]
            )
            return cls(
                t["jobId"],
                to_checksum_address(t["submitter"]),
                t["price"],
                t["submittedAt"],
                t["deadline"],
                t["serviceWindow"],
                t["maxTokens"],
                t["protocolFeeBps"],
                bytes(t["baseModel"]),
                bytes(t["inputHash"]),
                adapters,
            )
        adapters = tuple(AdapterTerm(a[0], a[1], a[2], bytes(a[3])) for a in t[10])
        return cls(t[0], to_checksum_address(t[1]), *t[2:8], bytes(t[8]), bytes(t[9]), adapters)

    def hash(self) -> bytes:
        """keccak256 of the struct's ABI encoding (abi.encode(terms) without its leading offset word):
        what the market stores a prefix of and what result signatures name as termsHash."""
        return keccak(encode([TERMS_ABI], [self.as_abi()])[32:])

    # ---- money ----
    @property
    def adapter_fees(self) -> int:
        return sum(a.fee for a in self.adapters)

    @property
    def protocol_amount(self) -> int:
        return self.price * self.protocol_fee_bps // BPS

    @property
    def node_amount(self) -> int:
        """What the node is paid for serving the job (held for the challenge window)."""
        return self.price - self.adapter_fees - self.protocol_amount

    @property
    def adapter_id(self) -> int:
        """The first (for a single-adapter job: the only) adapter."""
        return self.adapters[0].id

    @property
    def adapter_hash(self) -> bytes:
        return self.adapters[0].content_hash

    # ---- persistence ----
    def to_json(self) -> dict:
        d = asdict(self)
        d["base_model"] = self.base_model.hex()
        d["input_hash"] = self.input_hash.hex()
        d["adapters"] = [{**asdict(a), "content_hash": a.content_hash.hex()} for a in self.adapters]
        return d

    @classmethod
    def from_json(cls, d: dict) -> Terms:
        adapters = tuple(
            AdapterTerm(a["id"], a["weight_bps"], a["fee"], bytes.fromhex(a["content_hash"]))
            for a in d["adapters"]
        )
        return cls(
            d["job_id"],
            d["submitter"],
            d["price"],
            d["submitted_at"],
            d["deadline"],
            d["service_window"],
            d["max_tokens"],
            d["protocol_fee_bps"],
            bytes.fromhex(d["base_model"]),
            bytes.fromhex(d["input_hash"]),
            adapters,
        )
