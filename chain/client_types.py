"""What the synchronous client (chain/client.py) returns: typed jobs, results, earnings, signature checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from chain.protocol import JobStatus
from chain.terms import Terms


class ContractCallError(RuntimeError):
    pass


class UnknownJobError(ContractCallError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist on this deployment (check --deployment and --rpc)")
        self.job_id = job_id


@dataclass(frozen=True)
class JobInfo:
    """A job: its terms (from JobSubmitted) and where it stands on chain now."""

    job_id: int
    submitter: str
    node: str | None  # None until claimed
    adapter_id: int
    adapter_hash: bytes
    input_hash: bytes
    price_wei: int
    adapter_fee_wei: int
    protocol_fee_bps: int
    max_tokens: int
    deadline: int
    status: JobStatus
    terms: Terms | None = None


@dataclass(frozen=True)
class SubmittedJob:
    job_id: int
    tx_hash: str
    block_number: int
    price_wei: int
    deadline: int


@dataclass(frozen=True)
class Earnings:
    """What an account earned, from the market's payment events, and what it can withdraw now."""

    account: str
    withdrawable_wei: int
    node_wei: int  # as a node operator (ResultSubmitted.nodeAmount; held for the challenge window first)
    jobs_served: int
    adapter_wei: dict[int, int] = field(default_factory=dict)  # adapter id -> fees (as its publisher)
    adapter_jobs: dict[int, int] = field(default_factory=dict)

    @property
    def adapter_total_wei(self) -> int:
        return sum(self.adapter_wei.values())


@dataclass(frozen=True)
class JobResult:
    job_id: int
    node: str
    output: bytes
    output_hash: bytes
    node_amount: int
    adapter_amount: int
    protocol_amount: int
    tx_hash: str
    block_number: int
    proof_hash: bytes = b"\x00" * 32
    output_cid: str = ""

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class SignatureCheck:
    """The result's EIP-712 signature, recovered here, against the signer the node registered."""

    recovered: str
    registered: str

    @property
    def valid(self) -> bool:
        return self.recovered == self.registered


@dataclass(frozen=True)
class VerifiedResult:
    result: JobResult
    signature: SignatureCheck

    @property
    def text(self) -> str:
        return self.result.text
