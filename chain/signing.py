"""EIP-712 result signatures (protocol v2): a node signs one ResultBatch over all results it posts at once.

Each Result names the job, the hash of its terms (so the signature covers input, adapters, price, deadline),
the output hash and the hash of the verification proof. A signature over one batch is worthless for any
other batch: another subset, order or output gives another digest."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

DOMAIN_NAME = "OpenLoRA"
DOMAIN_VERSION = "2"
ZERO32 = b"\x00" * 32
BATCH_TYPES = {
    "ResultBatch": [{"name": "results", "type": "Result[]"}],
    "Result": [
        {"name": "jobId", "type": "uint256"},
        {"name": "termsHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
        {"name": "proofHash", "type": "bytes32"},
    ],
}


@dataclass(frozen=True)
class SignedResult:
    """The facts a node vouches for about one job: this output (and proof) for exactly these terms."""

    job_id: int
    terms_hash: bytes
    output_hash: bytes
    proof_hash: bytes = ZERO32

    @classmethod
    def for_output(
        cls, job_id: int, terms_hash: bytes, output: bytes, proof_hash: bytes = ZERO32
    ) -> SignedResult:
        return cls(job_id, terms_hash, keccak(output), proof_hash)

    def message(self) -> dict:
        return {
            "jobId": self.job_id,
            "termsHash": self.terms_hash,
            "outputHash": self.output_hash,
            "proofHash": self.proof_hash,
        }


@dataclass(frozen=True)
class ResultBatch:
    chain_id: int
    market: str
    results: tuple[SignedResult, ...]

    def _typed(self) -> tuple[dict, dict]:
        domain = {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.market,
        }
        return domain, {"results": [r.message() for r in self.results]}

    def digest(self) -> bytes:
        domain, message = self._typed()
        signable = encode_typed_data(domain_data=domain, message_types=BATCH_TYPES, message_data=message)
        return keccak(b"\x19\x01" + signable.header + signable.body)

    def sign(self, private_key: bytes | str) -> bytes:
        domain, message = self._typed()
        return bytes(Account.sign_typed_data(private_key, domain, BATCH_TYPES, message).signature)

    def recover(self, signature: bytes) -> str:
        domain, message = self._typed()
        signable = encode_typed_data(domain_data=domain, message_types=BATCH_TYPES, message_data=message)
        return Account.recover_message(signable, signature=signature)
