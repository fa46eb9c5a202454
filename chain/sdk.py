"""The Python SDK for submitters, publishers and operators: `OpenLoRA` (sync) and `AsyncOpenLoRA`.

    from chain.sdk import OpenLoRA
    client = OpenLoRA.connect("http://127.0.0.1:8545", "run/dev/deployment.json", private_key)
    job = client.submit(adapter_id=1, prompt="Tell me about the sea", max_tokens=32)
    verified = client.wait_verified(job.job_id)       # output + locally checked EIP-712 signature
    print(verified.text, verified.signature.valid)

`AsyncOpenLoRA` offers the same calls as coroutines. They run the synchronous client in a worker thread
(one at a time per client, web3's HTTP provider is not meant to be shared across threads), so an event
loop is never blocked and both APIs return the same typed results."""

from __future__ import annotations

import asyncio
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from chain.client import (
    ContractCallError,
    Earnings,
    JobInfo,
    JobResult,
    ProtocolClient,
    SignatureCheck,
    SubmittedJob,
    UnknownJobError,
    VerifiedResult,
)
from chain.deployment import Deployment
from chain.protocol import AdapterInfo, JobStatus

__all__ = [
    "AdapterInfo",
    "AsyncOpenLoRA",
    "ContractCallError",
    "Earnings",
    "JobInfo",
    "JobResult",
    "JobStatus",
    "OpenLoRA",
    "SignatureCheck",
    "SubmittedJob",
    "UnknownJobError",
    "VerifiedResult",
]


def _account(key: LocalAccount | str | bytes | None) -> LocalAccount | None:
    if key is None or isinstance(key, LocalAccount):
        return key
    return Account.from_key(key)


class OpenLoRA(ProtocolClient):
    """Synchronous SDK: every contract call of the protocol, typed (see chain/client.py for each one)."""

    @classmethod
    def connect(
        cls,
        rpc: str,
        deployment: Deployment | Path | str,
        account: LocalAccount | str | bytes | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> OpenLoRA:
        """Connect to `rpc` for the contracts named in `deployment` (a Deployment or its JSON file);
        `account` (a LocalAccount or a private key) is needed only to send transactions."""
        w3 = Web3(HTTPProvider(rpc, request_kwargs={"timeout": timeout_s}))
        if not w3.is_connected():
            raise ContractCallError(f"cannot reach the RPC endpoint {rpc}: is the chain running?")
        d = deployment if isinstance(deployment, Deployment) else Deployment.load(Path(deployment))
        if w3.eth.chain_id != d.chain_id:
            raise ContractCallError(
                f"{rpc} is chain {w3.eth.chain_id}, the deployment is for chain {d.chain_id}"
            )
        return cls(w3, d, _account(account))

    def verify_result(
        self,
        job_id: int,
        *,
        gateways: list[str],
        model: str | None = None,
        cache_dir: Path | None = None,
    ):
        """Re-check job `job_id`'s posted result against its TOPLOC proof: fetch the adapter (verified as a
        node does) and the node's evidence from `gateways`, run one prefill over prompt + output, and
        return a ResultVerdict (`.passed`, `.check.reason`, `.check.first_failing_chunk`). Loads the base
        model (`model`, default: the one whose id the job's terms name). CPU is enough for the embedded
        model. Do not call it from a running event loop (use `AsyncOpenLoRA.verify_result`)."""
        import tempfile

        from chain.verify import verify_job
        from inference.ipfs.sources import GatewaySource
        from inference.models import load_base_model, model_name_for_id

        try:
            base = load_base_model(model_name_for_id(self.terms(job_id).base_model, model))
        except ValueError as e:
            raise ContractCallError(f"job {job_id}: {e} (model=NAME)") from None

        async def run(cache: Path):
            sources = [GatewaySource(url) for url in gateways]
            try:
                return await verify_job(self, job_id, base=base, sources=sources, cache_dir=cache)
            finally:
                for src in sources:
                    await src.close()

        if cache_dir is not None:
            return asyncio.run(run(Path(cache_dir)))
        with tempfile.TemporaryDirectory() as tmp:
            return asyncio.run(run(Path(tmp)))


class AsyncOpenLoRA:
    """The SDK as coroutines, with the same names and results as `OpenLoRA`."""

    def __init__(self, client: OpenLoRA) -> None:
        self.sync = client
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        rpc: str,
        deployment: Deployment | Path | str,
        account: LocalAccount | str | bytes | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> AsyncOpenLoRA:
        return cls(await asyncio.to_thread(OpenLoRA.connect, rpc, deployment, account, timeout_s=timeout_s))

    @property
    def address(self) -> str | None:
        return self.sync.address

    async def _call(self, fn, *args, **kwargs):
        async with self._lock:
            return await asyncio.to_thread(fn, *args, **kwargs)

    async def submit(self, adapter_id: int, prompt: str | bytes, **terms) -> SubmittedJob:
        return await self._call(self.sync.submit, adapter_id, prompt, **terms)

    async def job(self, job_id: int) -> JobInfo:
        return await self._call(self.sync.job, job_id)

    async def jobs(self, submitter: str | None = None) -> list[JobInfo]:
        return await self._call(self.sync.jobs, submitter)

    async def result(self, job_id: int) -> JobResult | None:
        return await self._call(self.sync.result, job_id, self.sync.deployment.start_block)

    async def wait_result(self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5) -> JobResult:
        """Polls without holding the worker thread between tries."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = await self.result(job_id)
            if found is not None:
                return found
            if loop.time() >= deadline:
                raise TimeoutError(f"job {job_id}: no result within {timeout:.0f}s")
            await asyncio.sleep(poll_s)

    async def verify_signature(self, result: JobResult) -> SignatureCheck:
        return await self._call(self.sync.verify_signature, result)

    async def verify_result(self, job_id: int, **kwargs):
        """`OpenLoRA.verify_result` in a worker thread (it runs its own event loop)."""
        return await asyncio.to_thread(self.sync.verify_result, job_id, **kwargs)

    async def wait_verified(
        self, job_id: int, *, timeout: float = 300.0, poll_s: float = 0.5
    ) -> VerifiedResult:
        result = await self.wait_result(job_id, timeout=timeout, poll_s=poll_s)
        return VerifiedResult(result, await self.verify_signature(result))

    async def min_price(self, adapter_id: int) -> int:
        return await self._call(self.sync.min_price, adapter_id)

    async def suggested_price(self, adapter_id: int, max_tokens: int) -> int:
        return await self._call(self.sync.suggested_price, adapter_id, max_tokens)

    async def adapter(self, adapter_id: int) -> AdapterInfo:
        return await self._call(self.sync.adapter, adapter_id)

    async def list_adapters(self, publisher: str | None = None) -> list[AdapterInfo]:
        return await self._call(self.sync.list_adapters, publisher)

    async def register_adapter(self, *args, **kwargs) -> int:
        return await self._call(self.sync.register_adapter, *args, **kwargs)

    async def earnings(self, account: str | None = None) -> Earnings:
        return await self._call(self.sync.earnings, account)

    async def withdrawable(self, account: str | None = None) -> int:
        return await self._call(self.sync.withdrawable, account)

    async def withdraw(self) -> dict:
        return await self._call(self.sync.withdraw)

    async def register_node(self, signer: str, base_model: bytes, peer_id: str, stake_wei: int) -> dict:
        return await self._call(self.sync.register_node, signer, base_model, peer_id, stake_wei)
