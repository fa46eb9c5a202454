"""`openlora validator run`: a registered validator's daemon. It re-checks a sample of new results
(chain/verify.py: one prefill per result) and disputes the ones that fail inside their challenge window,
with its own recomputed proof as evidence (a raw block it serves at `/ipfs/{cid}`); it votes on the disputes
other validators open, after checking the result itself; and it settles disputes once the arbiter ruled.

It follows the chain by polling `eth_getLogs` over confirmed ranges from a cursor persisted in its data
folder, so a restart resumes where it stopped and re-checks nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.client import ProtocolClient
from chain.client_types import ContractCallError
from chain.deployment import Deployment
from chain.protocol import JobStatus
from chain.verify import ResultVerdict, verify_job
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.cid import RAW, make_cid
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.sources import BlockSource
from inference.models import LoadedModel
from inference.validate.strict_json import loads_object

log = logging.getLogger("openlora.validator")


@dataclass
class ValidatorStats:
    checked: int = 0
    failed: int = 0
    disputed: int = 0
    votes: int = 0
    settled: int = 0


class ValidatorDaemon:
    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        account: LocalAccount,
        base: LoadedModel,
        sources: list[BlockSource],
        data_dir: Path,
        *,
        sample_rate: float = 1.0,
        poll_s: float = 0.5,
        confirmations: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
    ) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError("sample_rate must be in (0, 1]: the share of new results to re-check")
        self.client = ProtocolClient(w3, deployment, account)
        self.account = account
        self.base = base
        self.sources = sources
        self.data_dir = Path(data_dir)
        self.sample_rate = sample_rate
        self.poll_s = poll_s
        self.confirmations = confirmations
        self.store = BlockStore(self.data_dir / "evidence")
        self.gateway = TrustlessGateway(self.store, host=host, port=port)
        self.rng = random.Random(seed)
        self.stats = ValidatorStats()
        self._cursor_path = self.data_dir / "cursor.json"
        self.market = self.client.market
        self.arbiter = deployment.contract(w3.eth, "ValidatorArbiter")

    # ---- state ----
    def _cursor(self) -> int:
        try:
            return int(loads_object(self._cursor_path.read_bytes())["next_block"])
        except (FileNotFoundError, KeyError, ValueError):
            return self.client.deployment.start_block

    def _save_cursor(self, block: int) -> None:
        tmp = self._cursor_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"next_block": block}))
        tmp.replace(self._cursor_path)

    # ---- the loop ----
    async def run(self, stop: asyncio.Event) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not await asyncio.to_thread(self.client.adapters.functions.isValidator(self.account.address).call):
            raise ContractCallError(
                f"{self.account.address} is not a validator the AdapterRegistry allows now: ask its owner "
                "to call setValidator, or use the key of an allowed validator"
            )
        url = await self.gateway.start()
        log.info("validator %s: evidence served at %s", self.account.address, url)
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except Exception as e:  # an RPC hiccup: keep the cursor, try again
                    log.warning("validator step failed (%s: %s); retrying", type(e).__name__, e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
        finally:
            await self.gateway.stop()

    async def step(self) -> None:
        start = self._cursor()
        head = await asyncio.to_thread(lambda: self.client.w3.eth.block_number) - self.confirmations
        if head < start:
            return
        events = self.market.events

        def logs(event):
            return event.get_logs(from_block=start, to_block=head)

        results = await asyncio.to_thread(logs, events.ResultSubmitted)
        opened = await asyncio.to_thread(logs, events.DisputeOpened)
        ruled = await asyncio.to_thread(logs, events.DisputeRuled)
        for e in results:
            if self.rng.random() < self.sample_rate:
                await self._check_result(e["args"]["jobId"])
        for e in opened:
            if e["args"]["challenger"] != self.account.address:
                await self._vote(e["args"]["jobId"])
        for e in ruled:
            await self._settle(e["args"]["jobId"])
        self._save_cursor(head + 1)

    # ---- actions ----
    async def _verify(self, job_id: int) -> ResultVerdict:
        return await verify_job(
            self.client, job_id, base=self.base, sources=self.sources, cache_dir=self.data_dir / "adapters"
        )

    async def _check_result(self, job_id: int) -> None:
        verdict = await self._verify(job_id)
        self.stats.checked += 1
        if verdict.passed:
            log.info("job %d: result verified (%.2fs)", job_id, verdict.check.verify_s)
            return
        self.stats.failed += 1
        log.warning("job %d: result FAILED verification: %s", job_id, verdict.check.reason)
        if await asyncio.to_thread(self.client.job_status, job_id) != JobStatus.RESULTED:
            return  # already disputed by another validator (we vote on it) or past the window
        evidence_cid = self._publish_evidence(job_id, verdict)
        terms = await asyncio.to_thread(self.client.terms, job_id)
        bond = await asyncio.to_thread(self.market.functions.disputeBond().call)
        try:
            await asyncio.to_thread(
                self.client.transact, self.market.functions.dispute(terms.as_abi(), evidence_cid), bond
            )
        except ContractCallError as e:
            log.warning("job %d: dispute not sent: %s", job_id, e)
            return
        self.stats.disputed += 1
        log.warning("job %d: DISPUTED with evidence %s", job_id, evidence_cid)

    def _publish_evidence(self, job_id: int, verdict: ResultVerdict) -> str:
        """The dispute's evidence, as a raw block this validator serves (its CID goes on chain with the
        dispute): its own recomputed TOPLOC proof of prompt + output under the job's adapter when the check
        got that far, else a record of what failed (no evidence, malformed, edited output)."""
        report = verdict.check.report
        if report is not None and report.evidence:
            cid = make_cid(report.evidence, codec=RAW, version=1)
            self.store.put(cid, report.evidence)
            return cid.text
        record = {
            "job_id": job_id,
            "validator": self.account.address,
            "passed": verdict.check.passed,
            "reason": verdict.check.reason,
            "first_failing_chunk": verdict.check.first_failing_chunk,
            "node_evidence": verdict.evidence_cid,
        }
        data = json.dumps(record, sort_keys=True).encode()
        cid = make_cid(data, codec=RAW, version=1)
        self.store.put(cid, data)
        return cid.text

    async def _vote(self, job_id: int) -> None:
        voted = await asyncio.to_thread(self.arbiter.functions.hasVoted(job_id, self.account.address).call)
        if voted:
            return
        verdict = await self._verify(job_id)
        fraud = not verdict.passed
        try:
            await asyncio.to_thread(self.client.transact, self.arbiter.functions.vote(job_id, fraud))
        except ContractCallError as e:
            log.info("job %d: vote not sent (%s)", job_id, e)
            return
        self.stats.votes += 1
        log.warning("job %d: voted %s (%s)", job_id, "FRAUD" if fraud else "no fraud", verdict.check.reason)

    async def _settle(self, job_id: int) -> None:
        if await asyncio.to_thread(self.client.job_status, job_id) != JobStatus.DISPUTED:
            return
        terms = await asyncio.to_thread(self.client.terms, job_id)
        try:
            await asyncio.to_thread(self.client.transact, self.market.functions.settleDispute(terms.as_abi()))
        except ContractCallError as e:
            log.info("job %d: settle not sent (%s)", job_id, e)
            return
        self.stats.settled += 1
        log.warning("job %d: dispute settled", job_id)
