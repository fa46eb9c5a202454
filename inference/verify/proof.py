"""TOPLOC proofs of one generation, built from the hidden states the engine recorded (no extra forward).

A proof commits to the final normalized hidden states (what the LM head reads) of a request: one chunk for
the prefill (every prompt position), then one chunk per `chunk` decode steps. Each chunk is TOPLOC's
polynomial over the top-k (by magnitude) entries of the chunk's flattened bfloat16 activations, built by
the reference implementation (`toploc.ProofPoly`, PrimeIntellect): 2 + 2 k bytes, 258 for k = 128.

Wire format (version 1, big-endian), `Proof.to_bytes()`:

    b"TPLC" | version u8 | topk u16 | chunk u16 | hidden_size u32 | prompt_len u32 | decode_steps u32
    | chunk polynomials, back to back: chunk i is 2 + 2 * min(topk, rows_i * hidden_size) bytes

where rows_i is prompt_len for the prefill chunk and min(chunk, steps left) for a decode chunk, so the
layout follows from the header alone. `proof_hash` is keccak256 over exactly these bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import ModuleType

import torch
from eth_utils import keccak

from inference.engine.messages import GenerationResult, HiddenStates

MAGIC = b"TPLC"
VERSION = 1
_HEADER = struct.Struct(">4sBHHIII")
HEADER_BYTES = _HEADER.size  # 21


class ProofFormatError(ValueError):
    """Proof bytes that do not parse as a version-1 TOPLOC proof: the node that sent them is at fault."""


class ToplocMissing(RuntimeError):
    """The toploc package is not importable."""


def load_toploc() -> ModuleType:
    """The toploc module, imported lazily: the engine never needs it."""
    try:
        import toploc
    except ImportError as e:  # includes the undefined-symbol failure of a wheel built for another torch
        raise ToplocMissing(
            f"toploc does not import ({e}): run scripts/setup.sh, which builds toploc 0.1.6 against the "
            "installed torch (requirements/toploc.txt); a PyPI wheel built for another torch fails like this"
        ) from e
    return toploc


@dataclass(frozen=True)
class ProofParams:
    """TOPLOC's defaults (the paper's and the reference implementation's): top-128 per chunk of 32 tokens."""

    topk: int = 128
    chunk: int = 32  # decode steps per proof chunk

    def __post_init__(self) -> None:
        if not 1 <= self.topk <= 0xFFFF or not 1 <= self.chunk <= 0xFFFF:
            raise ValueError(f"ProofParams topk and chunk must be in [1, 65535], got {self}")


@dataclass(frozen=True)
class Proof:
    params: ProofParams
    hidden_size: int
    prompt_len: int
    decode_steps: int  # decode passes recorded: outputs - 1, or outputs when the last step produced EOS
    chunks: tuple[bytes, ...]  # TOPLOC polynomial bytes: the prefill chunk, then the decode chunks

    def chunk_rows(self) -> list[tuple[int, int]]:
        """Token positions [start, stop) each chunk covers (prefill first)."""
        spans = [(0, self.prompt_len)]
        for s in range(0, self.decode_steps, self.params.chunk):
            spans.append(
                (self.prompt_len + s, self.prompt_len + min(s + self.params.chunk, self.decode_steps))
            )
        return spans

    def chunk_topk(self) -> list[int]:
        return [min(self.params.topk, (b - a) * self.hidden_size) for a, b in self.chunk_rows()]

    def to_bytes(self) -> bytes:
        p = self.params
        header = _HEADER.pack(
            MAGIC, VERSION, p.topk, p.chunk, self.hidden_size, self.prompt_len, self.decode_steps
        )
        return header + b"".join(self.chunks)

    @property
    def hash(self) -> bytes:
        return proof_hash(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Proof:
        """Parse proof bytes. Raises ProofFormatError saying what is wrong with them."""
        if len(data) < HEADER_BYTES:
            raise ProofFormatError(
                f"proof of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header"
            )
        magic, version, topk, chunk, hidden, prompt_len, steps = _HEADER.unpack_from(data)
        if magic != MAGIC or version != VERSION:
            raise ProofFormatError(
                f"not a version-{VERSION} TOPLOC proof (magic {magic!r}, version {version})"
            )
        if topk == 0 or chunk == 0 or hidden == 0 or prompt_len == 0:
            raise ProofFormatError("proof header has a zero topk, chunk, hidden size or prompt length")
        shell = cls(ProofParams(topk, chunk), hidden, prompt_len, steps, ())
        sizes = [2 + 2 * k for k in shell.chunk_topk()]
        if len(data) != HEADER_BYTES + sum(sizes):
            raise ProofFormatError(
                f"proof is {len(data)} bytes; its header ({prompt_len} prompt tokens, {steps} decode steps, "
                f"hidden size {hidden}, top-{topk}, chunks of {chunk}) implies {HEADER_BYTES + sum(sizes)}"
            )
        chunks, at = [], HEADER_BYTES
        for size in sizes:
            chunks.append(bytes(data[at : at + size]))
            at += size
        return cls(shell.params, hidden, prompt_len, steps, tuple(chunks))


def proof_hash(proof_bytes: bytes) -> bytes:
    """keccak256 of the proof's wire bytes (32 bytes): what the node signs with its result (a bytes32)."""
    return keccak(proof_bytes)


def chunk_polynomial(activations: torch.Tensor, topk: int) -> bytes:
    """TOPLOC's polynomial bytes for one chunk: top-`topk` entries by magnitude of the flattened bfloat16
    activations, interpolated by toploc.ProofPoly."""
    toploc = load_toploc()
    flat = activations.detach().to(device="cpu", dtype=torch.bfloat16).reshape(-1)
    k = min(topk, flat.numel())
    indices = flat.abs().topk(k).indices
    return toploc.ProofPoly.from_points_tensor(indices, flat[indices]).to_bytes()


def build_proof(hidden: HiddenStates, params: ProofParams | None = None) -> Proof:
    """The TOPLOC proof of one request's recorded hidden states (GenerationResult.hidden)."""
    params = params or ProofParams()
    prefill, decode = hidden.prefill, hidden.decode
    if prefill.dim() != 2 or decode.dim() != 2 or prefill.shape[1] != decode.shape[1]:
        raise ValueError(
            f"hidden states of shapes {tuple(prefill.shape)} / {tuple(decode.shape)}: "
            "expected [P, H] / [steps, H]"
        )
    if prefill.shape[0] != len(hidden.prompt_ids) or not hidden.prompt_ids:
        raise ValueError(
            f"prefill states cover {prefill.shape[0]} positions, the prompt {len(hidden.prompt_ids)}"
        )
    chunks = [chunk_polynomial(prefill, params.topk)]
    for s in range(0, decode.shape[0], params.chunk):
        chunks.append(chunk_polynomial(decode[s : s + params.chunk], params.topk))
    return Proof(params, int(prefill.shape[1]), int(prefill.shape[0]), int(decode.shape[0]), tuple(chunks))


def prove(result: GenerationResult, params: ProofParams | None = None) -> Proof:
    """build_proof for a finished generation. Raises ValueError when it recorded no hidden states."""
    if result.hidden is None:
        raise ValueError(
            "this result carries no hidden states: submit the request with record_hidden=True "
            "(or build the engine with EngineConfig(record_hidden=True)) to prove it; only the built-in "
            "engine records them (not the vllm or naive backends)"
        )
    return build_proof(result.hidden, params)
