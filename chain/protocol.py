"""Typed access to the three protocol contracts of one deployment (AsyncWeb3)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from web3 import AsyncWeb3
from web3.contract import AsyncContract

from chain.artifacts import load_artifact
from chain.deployment import Deployment


class JobStatus(IntEnum):
    NONE = 0
    OPEN = 1
    CLAIMED = 2
    COMPLETED = 3
    EXPIRED = 4
    CANCELLED = 5


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


@dataclass(frozen=True)
class JobTerms:
    """What the market will pay out for a job, as it stands on chain (getJob)."""

    price: int
    adapter_fee: int  # snapshotted at submission: a later setFee does not change it
    protocol_fee_bps: int
    deadline: int
    status: JobStatus
    node: str


class Protocol:
    def __init__(self, w3: AsyncWeb3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.adapters: AsyncContract = deployment.contract(w3.eth, "AdapterRegistry")
        self.nodes: AsyncContract = deployment.contract(w3.eth, "NodeRegistry")
        self.market: AsyncContract = deployment.contract(w3.eth, "JobMarket")

    @property
    def contracts(self) -> list[AsyncContract]:
        return [self.adapters, self.nodes, self.market]

    def calldata(self, contract: AsyncContract, fn: str, *args: object) -> str:
        return contract.encode_abi(fn, args=list(args))

    async def adapter(self, adapter_id: int) -> AdapterInfo:
        a = await self.adapters.functions.getAdapter(adapter_id).call()
        return adapter_info(adapter_id, a)

    async def job_status(self, job_id: int) -> JobStatus:
        job = await self.market.functions.getJob(job_id).call()
        return JobStatus(_field(job, "status"))

    async def job_terms(self, job_id: int) -> JobTerms:
        job = await self.market.functions.getJob(job_id).call()
        return JobTerms(
            price=_field(job, "price"),
            adapter_fee=_field(job, "adapterFee"),
            protocol_fee_bps=_field(job, "protocolFeeBps"),
            deadline=_field(job, "deadline"),
            status=JobStatus(_field(job, "status")),
            node=_field(job, "node"),
        )

    async def job_node(self, job_id: int) -> str:
        return _field(await self.market.functions.getJob(job_id).call(), "node")

    async def attestations(self, adapter_id: int) -> int:
        return await self.adapters.functions.attestationCount(adapter_id).call()

    async def withdrawable(self, account: str) -> int:
        return await self.market.functions.balanceOf(account).call()


def _field(struct: object, name: str) -> object:
    """web3 returns structs as tuples; read a field by its ABI name via the JobMarket ABI."""
    if isinstance(struct, dict):
        return struct[name]
    comps = next(o for o in load_artifact("JobMarket").abi if o.get("name") == "getJob")["outputs"][0][
        "components"
    ]
    return struct[[c["name"] for c in comps].index(name)]
