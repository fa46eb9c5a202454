"""A job's terms (protocol v2): emitted once in JobSubmitted, re-supplied by every later call, hashed on
chain.

The market stores only a 192-bit prefix of `Terms.hash()`. Release, reclaim, expiry, cancel and disputes name
the job by its full terms; claims and results (the node's hot path, paid per job) by a compact key: the head
word (job id, price, times, protocol fee), one word per adapter (id, fee) and the hash of the rest:

    body_hash  = keccak(submitter, serviceWindow, maxTokens, inputHash, [weightBps, contentHash] per adapter)
    rest_hash  = keccak(baseModel, body_hash)
    hash       = keccak(head, rest_hash, adapter words...)          (every field a 32-byte word)

This module is the one place that knows their ABI shape, hash, keys and money split; the node, SDK and CLI
ask it (contracts/src/lib/JobTypes.sol is the chain's side: TermsHash, JobHead)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from chain.signing import ZERO32

BPS = 10_000


def head_fields(head: int) -> tuple[int, int, int, int, int]:
    """(job_id, price, submitted_at, deadline, protocol_fee_bps) of a head word."""
    mask40 = (1 << 40) - 1
    return (
        head >> 192,
        (head >> 96) & ((1 << 96) - 1),
        (head >> 56) & mask40,
        (head >> 16) & mask40,
        head & 0xFFFF,
    )


def adapter_fields(word: int) -> tuple[int, int]:
    """(adapter id, fee) of an adapter word."""
    return word >> 96, word & ((1 << 96) - 1)


def key_hash(head: int, rest_hash: bytes, adapter_words: list[int] | tuple[int, ...]) -> bytes:
    """The terms hash from a key (what the market computes from a claim or result)."""
    return keccak(
        encode(["uint256", "bytes32"] + ["uint256"] * len(adapter_words), [head, rest_hash, *adapter_words])
    )


def rest_hash_of(base_model: bytes, body_hash: bytes) -> bytes:
    return keccak(base_model + body_hash)


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

    # ---- hash and keys (see the module docstring) ----
    @property
    def head(self) -> int:
        return (
            (self.job_id << 192)
            | (self.price << 96)
            | (self.submitted_at << 56)
            | (self.deadline << 16)
            | self.protocol_fee_bps
        )

    @property
    def adapter_words(self) -> list[int]:
        return [(a.id << 96) | a.fee for a in self.adapters]

    def body_hash(self) -> bytes:
        types = ["address", "uint32", "uint32", "bytes32"] + ["uint16", "bytes32"] * len(self.adapters)
        values: list[Any] = [
            to_checksum_address(self.submitter),
            self.service_window,
            self.max_tokens,
            self.input_hash,
        ]
        for a in self.adapters:
            values += [a.weight_bps, a.content_hash]
        return keccak(encode(types, values))

    def rest_hash(self) -> bytes:
        return rest_hash_of(self.base_model, self.body_hash())

    def hash(self) -> bytes:
        """What the market stores a prefix of and what result signatures name as termsHash."""
        return key_hash(self.head, self.rest_hash(), self.adapter_words)

    def claim_key(self) -> tuple:
        """The ClaimKey tuple claimJob(s) takes: (head, adapter words, body hash)."""
        return (self.head, self.adapter_words, self.body_hash())

    def result_entry(self, output: bytes, proof_hash: bytes = ZERO32) -> tuple:
        """The ResultEntry tuple submitResult(s) takes for an inline output."""
        return (self.head, self.adapter_words, self.rest_hash(), output, ZERO32, proof_hash)

    def result_entry_by_cid(self, cid: str, output_hash: bytes, proof_hash: bytes = ZERO32) -> tuple:
        """The ResultEntry tuple for an output kept off chain (its CID and keccak256)."""
        return (self.head, self.adapter_words, self.rest_hash(), cid.encode(), output_hash, proof_hash)

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
