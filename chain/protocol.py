"""Typed access to the protocol contracts of one deployment (AsyncWeb3), protocol v2.

A job's terms come from its JobSubmitted event (chain/terms.py); the market stores only their hash with the
status and claimant, which `job_state` reads. Calls that act on a job re-supply its terms."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from web3 import AsyncWeb3
from web3.contract import AsyncContract

from chain.deployment import Deployment

ZERO_ADDRESS = "0x" + "00" * 20


class JobStatus(IntEnum):
    NONE = 0
    OPEN = 1
    CLAIMED = 2
    RESULTED = 3  # answered; final once the challenge window passes
    DISPUTED = 4
    FINAL = 5  # a dispute found no fraud
    CANCELLED = 6
    EXPIRED = 7
    REFUNDED = 8  # a dispute found fraud


PAID_STATUSES = frozenset({JobStatus.RESULTED, JobStatus.DISPUTED, JobStatus.FINAL})


@dataclass(frozen=True)
class JobState:
    """What the market stores for a job now."""

    status: JobStatus
    node: str | None  # claimant's operator address
    offset_s: int  # seconds after submittedAt of the claim (Claimed) or the result (Resulted, ...)


@dataclass(frozen=True)
class AdapterInfo:
    adapter_id: int
    publisher: str
    content_hash: bytes
    base_model: bytes
    rank: int
    size: int
    fee_per_job: int
    retired: bool
    cid: str


def adapter_info(adapter_id: int, a: tuple) -> AdapterInfo:
    """From AdapterRegistry.getAdapter's tuple (publisher, contentHash, baseModel, rank, size, fee, retired,
    cid)."""
    return AdapterInfo(adapter_id, a[0], bytes(a[1]), bytes(a[2]), a[3], a[4], a[5], a[6], a[7])


def decode_state(raw: tuple | list) -> JobState:
    status, node, offset, _prefix = raw
    return JobState(JobStatus(status), None if node == ZERO_ADDRESS else node, offset)


class Protocol:
    def __init__(self, w3: AsyncWeb3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.adapters: AsyncContract = deployment.contract(w3.eth, "AdapterRegistry")
        self.nodes: AsyncContract = deployment.contract(w3.eth, "NodeRegistry")
        self.market: AsyncContract = deployment.contract(w3.eth, "JobMarket")
        self._stake_params: tuple[int, int] | None = None

    @property
    def contracts(self) -> list[AsyncContract]:
        return [self.adapters, self.nodes, self.market]

    def calldata(self, contract: AsyncContract, fn: str, *args: object) -> str:
        return contract.encode_abi(fn, args=list(args))

    async def adapter(self, adapter_id: int) -> AdapterInfo:
        a = await self.adapters.functions.getAdapter(adapter_id).call()
        return adapter_info(adapter_id, a)

    async def job_state(self, job_id: int) -> JobState:
        return decode_state(await self.market.functions.jobState(job_id).call())

    async def job_status(self, job_id: int) -> JobStatus:
        return (await self.job_state(job_id)).status

    async def job_node(self, job_id: int) -> str | None:
        return (await self.job_state(job_id)).node

    async def claim_stake_for(self, price: int) -> int:
        """What a claim on a job of this price locks: max(minClaimStake, price x claimStakeBps) (immutables,
        read once)."""
        if self._stake_params is None:
            m = self.market.functions
            self._stake_params = (await m.minClaimStake().call(), await m.claimStakeBps().call())
        minimum, bps = self._stake_params
        return max(minimum, price * bps // 10_000)

    async def attestations(self, adapter_id: int) -> int:
        return await self.adapters.functions.attestationCount(adapter_id).call()

    async def withdrawable(self, account: str) -> int:
        return await self.market.functions.balanceOf(account).call()
