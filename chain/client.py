"""A synchronous client for submitters, publishers and operators: the contract calls, typed.

The node daemon does not use this (it has the transaction manager); the CLI, the dev orchestrator and
the Python SDK (chain/sdk.py) do. Reads of history come from events, fetched in bounded block ranges."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.contract import Contract

from chain.deployment import Deployment
from chain.errors import describe_revert
from chain.protocol import AdapterInfo, JobStatus, adapter_info
from chain.signing import ResultClaim

ZERO_ADDRESS = "0x" + "00" * 20
LOG_RANGE = 10_000  # blocks per eth_getLogs request; public RPC providers cap the range


class ContractCallError(RuntimeError):
    pass


class UnknownJobError(ContractCallError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"job {job_id} does not exist on this deployment (check --deployment and --rpc)")
        self.job_id = job_id


@dataclass(frozen=True)
class JobInfo:
    """A job as the market stores it now."""

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
    node_wei: int  # as a node operator (ResultSubmitted.nodeAmount)
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


class ProtocolClient:
    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.adapters: Contract = deployment.contract(w3.eth, "AdapterRegistry")
        self.nodes: Contract = deployment.contract(w3.eth, "NodeRegistry")
        self.market: Contract = deployment.contract(w3.eth, "JobMarket")

    @property
    def address(self) -> str | None:
        return self.account.address if self.account is not None else None

    def _require_address(self, account: str | None) -> str:
        address = account or self.address
        if address is None:
            raise ContractCallError("no account given: pass one, or connect with a key")
        return Web3.to_checksum_address(address)

    def _logs(self, event, argument_filters: dict | None = None, from_block: int | None = None) -> list:
        start = self.deployment.start_block if from_block is None else from_block
        head = self.w3.eth.block_number
        logs: list = []
        while start <= head:
            end = min(head, start + LOG_RANGE - 1)
            logs += event.get_logs(from_block=start, to_block=end, argument_filters=argument_filters or {})
            start = end + 1
        return logs

    # ---- plumbing ----
    def transact(self, fn, value: int = 0) -> dict:
        if self.account is None:
            raise ContractCallError("this client has no account: pass one to send transactions")
        params = {"from": self.account.address, "value": value}
        try:
            fn.call(params)
        except Exception as e:
            data = getattr(e, "data", None)
            raise ContractCallError(describe_revert(data) if isinstance(data, str) else str(e)) from None
        params["nonce"] = self.w3.eth.get_transaction_count(self.account.address, "pending")
        tx = fn.build_transaction(params)
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        if receipt["status"] != 1:
            raise ContractCallError(f"transaction {tx_hash.hex()} reverted")
        return receipt

    # ---- publishers ----
    def adapter(self, adapter_id: int) -> AdapterInfo:
        return adapter_info(adapter_id, self.adapters.functions.getAdapter(adapter_id).call())

    def list_adapters(self, publisher: str | None = None) -> list[AdapterInfo]:
        """Registered adapters (optionally one publisher's), oldest first, with their current terms."""
        filters = {"publisher": Web3.to_checksum_address(publisher)} if publisher else None
        events = self._logs(self.adapters.events.AdapterRegistered, filters)
        return [self.adapter(e["args"]["adapterId"]) for e in events]

    def earnings(self, account: str | None = None) -> Earnings:
        """Payments to `account` as a node and as an adapter publisher, and its withdrawable balance.
        Adapter fees count what the market credited per job (before any payee split the publisher set)."""
        address = self._require_address(account)
        served = self._logs(self.market.events.ResultSubmitted, {"node": address})
        adapter_wei: dict[int, int] = {}
        adapter_jobs: dict[int, int] = {}
        for listing in self.list_adapters(address):
            submitted = self._logs(self.market.events.JobSubmitted, {"adapterId": listing.adapter_id})
            job_ids = [e["args"]["jobId"] for e in submitted]
            paid = self._logs(self.market.events.ResultSubmitted, {"jobId": job_ids}) if job_ids else []
            adapter_wei[listing.adapter_id] = sum(e["args"]["adapterAmount"] for e in paid)
            adapter_jobs[listing.adapter_id] = len(paid)
        return Earnings(
            account=address,
            withdrawable_wei=self.withdrawable(address),
            node_wei=sum(e["args"]["nodeAmount"] for e in served),
            jobs_served=len(served),
            adapter_wei=adapter_wei,
            adapter_jobs=adapter_jobs,
        )

    def register_adapter(
        self, cid: str, content_hash: bytes, base_model: bytes, rank: int, size: int, fee_per_job: int
    ) -> int:
        receipt = self.transact(
            self.adapters.functions.register(cid, content_hash, base_model, rank, size, fee_per_job)
        )
        (event,) = self.adapters.events.AdapterRegistered().process_receipt(receipt)
        return event["args"]["adapterId"]

    # ---- operators ----
    def register_node(self, signer: str, base_model: bytes, peer_id: str, stake_wei: int) -> dict:
        return self.transact(self.nodes.functions.register(signer, base_model, peer_id), value=stake_wei)

    def withdraw(self) -> dict:
        return self.transact(self.market.functions.withdraw())

    def withdrawable(self, account: str | None = None) -> int:
        return self.market.functions.balanceOf(self._require_address(account)).call()

    def node_signer(self, operator: str) -> str:
        """The result-signing key `operator` registered (the zero address if it is not registered)."""
        return self.nodes.functions.getNode(Web3.to_checksum_address(operator)).call()[0]

    # ---- submitters ----
    def min_price(self, adapter_id: int) -> int:
        """The smallest escrow the market accepts for a job on this adapter (its fee + protocol share)."""
        try:
            return self.market.functions.minPrice(adapter_id).call()
        except Exception as e:
            data = getattr(e, "data", None)
            raise ContractCallError(describe_revert(data) if isinstance(data, str) else str(e)) from None

    def suggested_price(self, adapter_id: int, max_tokens: int) -> int:
        """An escrow that nodes running the default policy will take: the market's minimum plus twice a
        node's cost at today's gas price (claim + result gas for a long output, and compute), grossed up
        for the protocol fee. Nodes refuse jobs that pay them less than their cost (docs/operators.md)."""
        gas = 150_000 + 40 * 16 * max_tokens  # claim + result, 16 output bytes a token at worst
        compute = 10**12 * (max_tokens + 1024) // 1000
        node_cost = 2 * (gas * int(self.w3.eth.gas_price) + compute)
        keep = 10_000 - self.market.functions.protocolFeeBps().call()
        return self.min_price(adapter_id) + -(-node_cost * 10_000 // keep)

    def submit_job(
        self,
        adapter_id: int,
        prompt: str | bytes,
        *,
        max_tokens: int,
        price_wei: int | None = None,
        deadline: int | None = None,
        ttl_s: int = 600,
    ) -> int:
        """The new job's id (see `submit` for the tx hash and deadline too)."""
        return self.submit(
            adapter_id, prompt, max_tokens=max_tokens, price_wei=price_wei, deadline=deadline, ttl_s=ttl_s
        ).job_id

    def submit(
        self,
        adapter_id: int,
        prompt: str | bytes,
        *,
        max_tokens: int = 64,
        price_wei: int | None = None,
        deadline: int | None = None,
        ttl_s: int = 600,
    ) -> SubmittedJob:
        """Submit a job with its escrow (default: `suggested_price`, what nodes take at today's gas)."""
        data = prompt.encode() if isinstance(prompt, str) else prompt
        price = self.suggested_price(adapter_id, max_tokens) if price_wei is None else price_wei
        deadline = deadline or int(self.w3.eth.get_block("latest")["timestamp"]) + ttl_s
        receipt = self.transact(
            self.market.functions.submitJob(adapter_id, data, max_tokens, deadline), value=price
        )
        (event,) = self.market.events.JobSubmitted().process_receipt(receipt)
        return SubmittedJob(
            event["args"]["jobId"],
            receipt["transactionHash"].to_0x_hex(),
            receipt["blockNumber"],
            price,
            deadline,
        )

    def job(self, job_id: int) -> JobInfo:
        j = self.market.functions.getJob(job_id).call()
        status = JobStatus(j[10])
        if status == JobStatus.NONE:
            raise UnknownJobError(job_id)
        return JobInfo(
            job_id=job_id,
            submitter=j[0],
            node=None if j[1] == ZERO_ADDRESS else j[1],
            adapter_id=j[2],
            adapter_hash=bytes(j[3]),
            input_hash=bytes(j[4]),
            price_wei=j[5],
            adapter_fee_wei=j[6],
            protocol_fee_bps=j[7],
            max_tokens=j[8],
            deadline=j[9],
            status=status,
        )

    def jobs(self, submitter: str | None = None) -> list[JobInfo]:
        """Jobs `submitter` (default: this client's account) submitted, oldest first, as they stand now."""
        events = self._logs(self.market.events.JobSubmitted, {"submitter": self._require_address(submitter)})
        return [self.job(e["args"]["jobId"]) for e in events]

    def jobs_by_id(self, job_ids: Iterable[int]) -> list[JobInfo]:
        return [self.job(i) for i in job_ids]

    def verify_signature(self, result: JobResult) -> SignatureCheck:
        """Recover the EIP-712 signer from the result transaction's own input and compare it with the
        signing key the node registered: the check a submitter can make without trusting anyone."""
        tx = self.w3.eth.get_transaction(result.tx_hash)
        _fn, params = self.market.decode_function_input(tx["input"])
        job = self.job(result.job_id)
        output_hash = keccak(params["output"]) if "output" in params else bytes(params["outputHash"])
        claim = ResultClaim(
            self.w3.eth.chain_id,
            self.market.address,
            result.job_id,
            job.input_hash,
            job.adapter_hash,
            output_hash,
        )
        return SignatureCheck(claim.recover(bytes(params["signature"])), self.node_signer(result.node))

    def wait_verified(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> VerifiedResult:
        result = self.wait_result(job_id, timeout=timeout, poll_s=poll_s)
        return VerifiedResult(result, self.verify_signature(result))

    def result(self, job_id: int, from_block: int | None = None) -> JobResult | None:
        """The job's result event, if one was posted (searched from the deployment's start block)."""
        logs = self._logs(self.market.events.ResultSubmitted, {"jobId": job_id}, from_block)
        if not logs:
            return None
        e = logs[-1]
        a = e["args"]
        return JobResult(
            job_id,
            a["node"],
            bytes(a["output"]),
            bytes(a["outputHash"]),
            a["nodeAmount"],
            a["adapterAmount"],
            a["protocolAmount"],
            e["transactionHash"].to_0x_hex(),
            e["blockNumber"],
        )

    def wait_result(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> JobResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.result(job_id, self.deployment.start_block)
            if found:
                return found
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id}: no result within {timeout:.0f}s")
