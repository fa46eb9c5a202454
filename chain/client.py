"""A synchronous client for submitters, publishers and operators: the contract calls, typed.

The node daemon does not use this (it has the transaction manager); the CLI, the dev orchestrator and
the Python SDK (chain/sdk.py) do. Reads of history come from events, fetched in bounded block ranges."""

from __future__ import annotations

import time
from collections.abc import Iterable

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from chain.client_types import (
    ContractCallError,
    Earnings,
    JobInfo,
    JobResult,
    SignatureCheck,
    SubmittedJob,
    UnknownJobError,
    VerifiedResult,
)
from chain.deployment import Deployment
from chain.errors import describe_revert
from chain.protocol import AdapterInfo, JobStatus, adapter_info, decode_state
from chain.results import batch_of, decode_results
from chain.terms import Terms

__all__ = [
    "ContractCallError",
    "Earnings",
    "JobInfo",
    "JobResult",
    "ProtocolClient",
    "SignatureCheck",
    "SubmittedJob",
    "UnknownJobError",
    "VerifiedResult",
]
LOG_RANGE = 10_000  # blocks per eth_getLogs request; public RPC providers cap the range


class ProtocolClient:
    def __init__(self, w3: Web3, deployment: Deployment, account: LocalAccount | None = None) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.account = account
        self.adapters: Contract = deployment.contract(w3.eth, "AdapterRegistry")
        self.nodes: Contract = deployment.contract(w3.eth, "NodeRegistry")
        self.market: Contract = deployment.contract(w3.eth, "JobMarket")
        self._terms: dict[int, Terms] = {}

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
            fees = {e["args"]["jobId"]: Terms.from_abi(e["args"]["terms"]).adapters[0].fee for e in submitted}
            paid = self._logs(self.market.events.ResultSubmitted, {"jobId": list(fees)}) if fees else []
            adapter_wei[listing.adapter_id] = sum(fees[e["args"]["jobId"]] for e in paid)
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
        """Withdraw everything this account can: its adapters' matured fees are credited first (one
        withdrawAdapterFees per adapter with any), then the pull balance is sent."""
        receipt = None
        for listing in self.list_adapters(self._require_address(None)):
            if self.market.functions.adapterFees(listing.adapter_id).call()[0]:
                receipt = self.transact(self.market.functions.withdrawAdapterFees(listing.adapter_id))
        if self.market.functions.balanceOf(self._require_address(None)).call() or receipt is None:
            receipt = self.transact(self.market.functions.withdraw())
        return receipt

    def withdrawable(self, account: str | None = None) -> int:
        """Wei `account` can withdraw now: its balance, its earnings past the challenge window, and the
        matured fees of the adapters it publishes."""
        address = self._require_address(account)
        adapters = sum(
            self.market.functions.adapterFees(a.adapter_id).call()[0] for a in self.list_adapters(address)
        )
        return self.market.functions.balanceOf(address).call() + adapters

    def held(self, account: str | None = None) -> int:
        """Wei of `account`'s earnings still in their challenge window (node payments, adapter fees)."""
        address = self._require_address(account)
        adapters = sum(
            self.market.functions.adapterFees(a.adapter_id).call()[1] for a in self.list_adapters(address)
        )
        return self.market.functions.heldOf(address).call() + adapters

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
        max_adapter_fee_wei: int | None = None,
    ) -> int:
        """The new job's id (see `submit` for the tx hash and deadline too)."""
        return self.submit(
            adapter_id,
            prompt,
            max_tokens=max_tokens,
            price_wei=price_wei,
            deadline=deadline,
            ttl_s=ttl_s,
            max_adapter_fee_wei=max_adapter_fee_wei,
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
        max_adapter_fee_wei: int | None = None,
    ) -> SubmittedJob:
        """Submit a job with its escrow (default: `suggested_price`, what nodes take at today's gas). The
        adapter fee accepted defaults to the fee read now: a publisher raising it before the submission is
        mined makes the submission revert (AdapterFeeAboveMax) instead of eating the node's share."""
        data = prompt.encode() if isinstance(prompt, str) else prompt
        price = self.suggested_price(adapter_id, max_tokens) if price_wei is None else price_wei
        deadline = deadline or int(self.w3.eth.get_block("latest")["timestamp"]) + ttl_s
        max_fee = self.adapter(adapter_id).fee_per_job if max_adapter_fee_wei is None else max_adapter_fee_wei
        receipt = self.transact(
            self.market.functions.submitJob(adapter_id, max_fee, data, max_tokens, deadline), value=price
        )
        (event,) = self.market.events.JobSubmitted().process_receipt(receipt)
        return SubmittedJob(
            event["args"]["jobId"],
            receipt["transactionHash"].to_0x_hex(),
            receipt["blockNumber"],
            price,
            deadline,
        )

    def terms(self, job_id: int) -> Terms:
        """The job's terms, from its JobSubmitted event (hash-checked by the market on every call)."""
        found = self._terms.get(job_id)
        if found is None:
            logs = self._logs(self.market.events.JobSubmitted, {"jobId": job_id})
            if not logs:
                raise UnknownJobError(job_id)
            found = self._terms[job_id] = Terms.from_abi(logs[-1]["args"]["terms"])
        return found

    def job_input(self, job_id: int) -> tuple[bytes, str]:
        """The job's inline input bytes and input CID (one of them empty), from JobSubmitted."""
        logs = self._logs(self.market.events.JobSubmitted, {"jobId": job_id})
        if not logs:
            raise UnknownJobError(job_id)
        return bytes(logs[-1]["args"]["input"]), logs[-1]["args"]["inputCid"]

    def job_status(self, job_id: int) -> JobStatus:
        """The job's stored status (NONE for an unknown id)."""
        return decode_state(self.market.functions.jobState(job_id).call()).status

    def job(self, job_id: int) -> JobInfo:
        state = decode_state(self.market.functions.jobState(job_id).call())
        if state.status == JobStatus.NONE:
            raise UnknownJobError(job_id)
        t = self.terms(job_id)
        return JobInfo(
            job_id=job_id,
            submitter=t.submitter,
            node=state.node,
            adapter_id=t.adapter_id,
            adapter_hash=t.adapter_hash,
            input_hash=t.input_hash,
            price_wei=t.price,
            adapter_fee_wei=t.adapter_fees,
            protocol_fee_bps=t.protocol_fee_bps,
            max_tokens=t.max_tokens,
            deadline=t.deadline,
            status=state.status,
            terms=t,
        )

    def cancel(self, job_id: int) -> dict:
        """Cancel an open job of yours; its escrow becomes withdrawable."""
        return self.transact(self.market.functions.cancel(self.terms(job_id).as_abi()))

    def expire(self, job_id: int) -> dict:
        """Close a job past its deadline without a result (anyone): escrow back to its submitter."""
        return self.transact(self.market.functions.expire(self.terms(job_id).as_abi()))

    def reclaim(self, job_id: int) -> dict:
        """Reclaim a job whose claimant did not answer within the service window (anyone): it reopens."""
        return self.transact(self.market.functions.reclaim(self.terms(job_id).as_abi()))

    def jobs(self, submitter: str | None = None) -> list[JobInfo]:
        """Jobs `submitter` (default: this client's account) submitted, oldest first, as they stand now."""
        events = self._logs(self.market.events.JobSubmitted, {"submitter": self._require_address(submitter)})
        return [self.job(e["args"]["jobId"]) for e in events]

    def jobs_by_id(self, job_ids: Iterable[int]) -> list[JobInfo]:
        return [self.job(i) for i in job_ids]

    def verify_signature(self, result: JobResult) -> SignatureCheck:
        """Recover the EIP-712 signer of the batch the result was posted in, from the transaction's own
        input, and compare it with the signing key the node registered: the check a submitter can make
        without trusting anyone (the batch names this job's terms hash and output hash)."""
        tx = self.w3.eth.get_transaction(result.tx_hash)
        items, signature = decode_results(self.market, tx["input"])
        batch = batch_of(self.w3.eth.chain_id, self.market.address, items)
        return SignatureCheck(batch.recover(signature), self.node_signer(result.node))

    def wait_verified(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> VerifiedResult:
        result = self.wait_result(job_id, timeout=timeout, poll_s=poll_s)
        return VerifiedResult(result, self.verify_signature(result))

    def result(self, job_id: int, from_block: int | None = None) -> JobResult | None:
        """The job's result, if one was posted: the ResultSubmitted event, and the output from the
        transaction's calldata (where v2 keeps it)."""
        logs = self._logs(self.market.events.ResultSubmitted, {"jobId": job_id}, from_block)
        if not logs:
            return None
        e = logs[-1]
        a = e["args"]
        tx_hash = e["transactionHash"].to_0x_hex()
        items, _sig = decode_results(self.market, self.w3.eth.get_transaction(tx_hash)["input"])
        item = next(i for i in items if i.job_id == job_id)
        return JobResult(
            job_id,
            a["node"],
            item.output,
            bytes(a["outputHash"]),
            a["nodeAmount"],
            item.adapter_fees,
            item.protocol_amount,
            tx_hash,
            e["blockNumber"],
            bytes(a["proofHash"]),
            item.output_cid,
        )

    def wait_result(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> JobResult:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.result(job_id, self.deployment.start_block)
            if found:
                return found
            time.sleep(poll_s)
        raise TimeoutError(f"job {job_id}: no result within {timeout:.0f}s")
