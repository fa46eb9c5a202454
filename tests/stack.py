"""A real protocol stack for end-to-end tests: Anvil, the deployed contracts, a trustless gateway over a
block store, and a node daemon running in-process on the tiny model. Outside parties (publisher,
submitter) talk to the contracts with plain web3, not with the node's code."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession, web
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from chain.deployment import Deployment, ProtocolParams, deploy, deploy_with_forge_script
from chain.devnet import Anvil, dev_private_key, free_port
from chain.protocol import JobStatus, decode_state
from chain.results import decode_results
from chain.terms import Terms
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.gateway_server import TrustlessGateway
from inference.models import LoadedModel, base_model_id
from inference.publish import PackagedAdapter, package_adapter, publish_to_store
from node.config import NodeConfig, parse_config
from node.identity import node_peer_id
from node.jobs import Job, JobBook, JobState
from node.keys import write_keystore

ADAPTER_FEE = Web3.to_wei(0.002, "ether")
PRICE = Web3.to_wei(0.01, "ether")
STAKE = Web3.to_wei(2, "ether")
PASSWORD = "test-password"


def send(w3: Web3, account: LocalAccount, fn, value: int = 0) -> dict:
    """Plain web3: build, sign, send, wait. Raises on revert."""
    tx = fn.build_transaction(
        {
            "from": account.address,
            "value": value,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction), timeout=60
    )
    assert receipt["status"] == 1, f"transaction reverted: {receipt['transactionHash'].hex()}"
    return receipt


@dataclass
class Stack:
    anvil: Anvil
    w3: Web3
    deployment: Deployment
    deployer: LocalAccount
    operator: LocalAccount
    publisher: LocalAccount
    submitter: LocalAccount
    blocks: BlockStore
    workdir: Path
    gateway_url: str = ""
    contracts: dict = field(default_factory=dict)

    def contract(self, name: str):
        if name not in self.contracts:
            self.contracts[name] = self.deployment.contract(self.w3.eth, name)
        return self.contracts[name]

    def publish(
        self, adapter_dir: Path, base: LoadedModel, fee: int = ADAPTER_FEE
    ) -> tuple[int, PackagedAdapter]:
        pkg = package_adapter(adapter_dir)
        publish_to_store(pkg, self.blocks)
        reg = self.contract("AdapterRegistry")
        receipt = send(
            self.w3,
            self.publisher,
            reg.functions.register(
                pkg.cid, pkg.content_hash, base_model_id(base.name), pkg.rank, pkg.size, fee
            ),
        )
        (event,) = reg.events.AdapterRegistered().process_receipt(receipt)
        return event["args"]["adapterId"], pkg

    def register_node(
        self,
        base: LoadedModel,
        operator: LocalAccount | None = None,
        name: str = "node",
        stake: int = STAKE,
    ) -> str:
        """Stake and register a node whose data dir is `<workdir>/<name>`; returns its libp2p peer id."""
        op = operator or self.operator
        peer_id = node_peer_id(self.workdir / name / "p2p.key")
        send(
            self.w3,
            op,
            self.contract("NodeRegistry").functions.register(op.address, base_model_id(base.name), peer_id),
            value=stake,
        )
        return peer_id

    def submit(
        self, adapter_id: int, prompt: str, *, max_tokens: int = 12, price: int = PRICE, ttl: int = 600
    ) -> int:
        market = self.contract("JobMarket")
        deadline = self.w3.eth.get_block("latest")["timestamp"] + ttl
        receipt = send(
            self.w3,
            self.submitter,
            market.functions.submitJob(
                adapter_id, self.max_fee(adapter_id), prompt.encode(), max_tokens, deadline
            ),
            value=price,
        )
        (event,) = market.events.JobSubmitted().process_receipt(receipt)
        return event["args"]["jobId"]

    def send_submit(
        self, adapter_id: int, data: bytes, max_tokens: int, deadline: int, *, price: int = PRICE, **fees: int
    ) -> None:
        """Broadcast a submission without waiting for it to be mined (tests that pause mining)."""
        market = self.contract("JobMarket")
        max_fee = self.max_fee(adapter_id)
        tx = market.functions.submitJob(adapter_id, max_fee, data, max_tokens, deadline).build_transaction(
            {
                "from": self.submitter.address,
                "value": price,
                "gas": 500_000,
                "nonce": self.w3.eth.get_transaction_count(self.submitter.address),
                **fees,
            }
        )
        self.w3.eth.send_raw_transaction(self.submitter.sign_transaction(tx).raw_transaction)

    def max_fee(self, adapter_id: int) -> int:
        """The adapter's fee now: what a submitter accepts (a later, higher fee reverts the submission)."""
        return self.contract("AdapterRegistry").functions.getAdapter(adapter_id).call()[5]

    def terms(self, job_id: int) -> Terms:
        """The job's terms from its JobSubmitted event (what every later call re-supplies)."""
        (event,) = self.contract("JobMarket").events.JobSubmitted.get_logs(
            from_block=self.deployment.start_block, argument_filters={"jobId": job_id}
        )
        return Terms.from_abi(event["args"]["terms"])

    def status(self, job_id: int) -> JobStatus:
        return decode_state(self.contract("JobMarket").functions.jobState(job_id).call()).status

    def output(self, job_id: int) -> bytes | None:
        """The job's posted output, read from the result transaction's calldata (where v2 keeps it)."""
        event = self.result_event(job_id)
        if event is None:
            return None
        market = self.contract("JobMarket")
        items, _ = decode_results(market, self.w3.eth.get_transaction(event["transactionHash"])["input"])
        return next(i.output for i in items if i.job_id == job_id)

    def result_event(self, job_id: int):
        logs = self.contract("JobMarket").events.ResultSubmitted.get_logs(
            from_block=self.deployment.start_block, argument_filters={"jobId": job_id}
        )
        return logs[-1] if logs else None

    async def wait_result(self, job_id: int, timeout: float = 120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            event = await asyncio.to_thread(self.result_event, job_id)
            if event is not None:
                return event
            await asyncio.sleep(0.3)
        raise TimeoutError(f"job {job_id} got no result in {timeout}s")

    def node_config(
        self,
        gateways: list[str] | None = None,
        *,
        operator: LocalAccount | None = None,
        name: str = "node",
        **sections: dict,
    ) -> NodeConfig:
        op = operator or self.operator
        keystore = self.workdir / f"{name}-operator.json"
        if not keystore.exists():
            write_keystore(keystore, op.key, PASSWORD, kdf_iterations=2**10)
            (self.workdir / "pw").write_text(PASSWORD)
        data = {
            "node": {"data_dir": str(self.workdir / name), "base_model": "tiny-llama"},
            "chain": {
                "rpc_urls": [self.anvil.url],
                "deployment": str(self.workdir / "deployment.json"),
                "keystore": str(keystore),
                "password_file": str(self.workdir / "pw"),
                "confirmations": 1,
                "poll_interval_s": 0.2,
            },
            "ipfs": {"gateways": gateways if gateways is not None else [self.gateway_url]},
            "engine": {"max_slots": 4, "max_batch": 4},
            "api": {"port": free_port()},
        }
        for name, values in sections.items():
            data.setdefault(name, {}).update(values)
        return parse_config(data, base=self.workdir)


async def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll `predicate` (it may make RPC calls: run in a thread) until true; AssertionError naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_job_state(book: JobBook, job_id: int, states: set[JobState], timeout: float = 60.0) -> Job:
    """The job once the node's book has it in one of `states` (AssertionError with its state on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = book.get(job_id)
        if job is not None and job.state in states:
            return job
        await asyncio.sleep(0.1)
    job = book.get(job_id)
    raise AssertionError(f"job {job_id} is {job.state if job else None}, expected one of {states}")


@contextlib.asynccontextmanager
async def protocol_stack(workdir: Path, *, forge_script: bool = False, **anvil_kwargs):
    """`forge_script`: deploy with contracts/script/Deploy.s.sol (what `make dev` and operators run) instead
    of the same CREATE2 deployment from Python (faster; identical addresses)."""
    with Anvil(**anvil_kwargs) as anvil:
        w3 = Web3(HTTPProvider(anvil.url))
        accounts = [Account.from_key(dev_private_key(i)) for i in range(4)]
        if forge_script:
            deployment = deploy_with_forge_script(anvil.url, dev_private_key(0), ProtocolParams())
        else:
            deployment = deploy(w3, accounts[0], ProtocolParams())
        deployment.save(workdir / "deployment.json")
        stack = Stack(anvil, w3, deployment, *accounts, BlockStore(workdir / "published-blocks"), workdir)
        gateway = TrustlessGateway(stack.blocks)
        stack.gateway_url = await gateway.start()
        try:
            yield stack
        finally:
            await gateway.stop()


@contextlib.asynccontextmanager
async def running_node(config: NodeConfig, base: LoadedModel):
    """The node daemon in this event loop; stopped (drained) on exit."""
    from node.runtime import run_node

    stop = asyncio.Event()
    task = asyncio.create_task(run_node(config, stop=stop, base=base))
    url = f"http://{config.api.host}:{config.api.port}"
    async with ClientSession() as http:
        for _ in range(200):
            if task.done():
                task.result()  # raises the startup error
            with contextlib.suppress(Exception):
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("node did not become ready")
    try:
        yield url
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


class TamperingGateway:
    """An adversary: a trustless gateway that proxies another and flips one byte of the blocks
    it is told to."""

    def __init__(self, upstream: str, tamper: set[str]) -> None:
        self.upstream = upstream
        self.tamper = tamper
        self.served_tampered = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        cid = request.match_info["cid"]
        async with (
            ClientSession() as http,
            http.get(
                f"{self.upstream}/ipfs/{cid}",
                params=request.query,
                headers={"Accept": request.headers.get("Accept", "")},
            ) as r,
        ):
            body = await r.read()
            status, ctype = r.status, r.headers.get("Content-Type", "application/octet-stream")
        if status == 200 and cid in self.tamper and body:
            body = bytes([body[0] ^ 0x01]) + body[1:]
            self.served_tampered += 1
        return web.Response(body=body, status=status, headers={"Content-Type": ctype})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/ipfs/{cid}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
