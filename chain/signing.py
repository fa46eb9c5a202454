"""EIP-712 result signatures: what a node signs and what anyone can check, via eth-account."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils import keccak

DOMAIN_NAME = "OpenLoRA"
DOMAIN_VERSION = "1"
RESULT_TYPES = {
    "Result": [
        {"name": "jobId", "type": "uint256"},
        {"name": "inputHash", "type": "bytes32"},
        {"name": "adapterHash", "type": "bytes32"},
        {"name": "outputHash", "type": "bytes32"},
    ]
}


@dataclass(frozen=True)
class ResultClaim:
    """The facts a node vouches for: this output came from this input under this adapter, for this job."""

    chain_id: int
    market: str
    job_id: int
    input_hash: bytes
    adapter_hash: bytes
    output_hash: bytes

    @classmethod
    def for_output(
        cls, chain_id: int, market: str, job_id: int, input_hash: bytes, adapter_hash: bytes, output: bytes
    ) -> ResultClaim:
        return cls(chain_id, market, job_id, input_hash, adapter_hash, keccak(output))

    def _typed(self) -> tuple[dict, dict]:
        domain = {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.market,
        }
        message = {
            "jobId": self.job_id,
            "inputHash": self.input_hash,
            "adapterHash": self.adapter_hash,
            "outputHash": self.output_hash,
        }
        return domain, message

    def sign(self, private_key: bytes | str) -> bytes:
        domain, message = self._typed()
        return bytes(Account.sign_typed_data(private_key, domain, RESULT_TYPES, message).signature)

    def recover(self, signature: bytes) -> str:
        domain, message = self._typed()
        signable = encode_typed_data(domain_data=domain, message_types=RESULT_TYPES, message_data=message)
        return Account.recover_message(signable, signature=signature)
