"""Fault injection against a real node process on Anvil: SIGKILL at every job state, reorgs, RPC outages,
an underpriced transaction. The pytest suite (tests/test_fault_*.py) imports the harness from here; run
this file for the longer variant, which prints one JSON object:

    PATH=$PWD/.tools/bin:$PATH .venv/bin/python scripts/fault_injection.py --jobs 6 --rounds 2

Checks at the end: every job paid exactly once (one ResultSubmitted on the canonical chain, status
COMPLETED) or refunded after expiry; the node never sent a second claim or result for a job; the
node's log shows each recovery."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiohttp import ClientSession  # noqa: E402
from web3 import Web3  # noqa: E402

from chain.devnet import free_port  # noqa: E402
from chain.protocol import JobStatus  # noqa: E402
from node.jobs import CRASH_HOOK_ENV, JobState  # noqa: E402
from node.keys import write_keystore  # noqa: E402

# The states a job is persisted in before each side effect, in the order one job passes them.
CRASH_STATES = [
    JobState.SEEN,
    JobState.FETCHING,
    JobState.CLAIMING,
    JobState.CLAIMED,
    JobState.RUNNING,
    JobState.POSTING,
]


def write_node_toml(
    stack, path: Path, *, rpc_urls: list[str] | None = None, **sections: dict
) -> tuple[Path, int]:
    """A node.toml for a child-process node on the tiny model against `stack` (tests.stack.Stack)."""
    keystore = stack.workdir / "operator.json"
    if not keystore.exists():
        write_keystore(keystore, stack.operator.key, "test-password", kdf_iterations=2**10)
        (stack.workdir / "pw").write_text("test-password")
    port = free_port()
    data: dict[str, dict] = {
        "node": {"data_dir": str(stack.workdir / "node"), "base_model": "tiny-llama", "log_format": "json"},
        "chain": {
            "rpc_urls": rpc_urls or [stack.anvil.url],
            "deployment": str(stack.workdir / "deployment.json"),
            "keystore": str(keystore),
            "password_file": str(stack.workdir / "pw"),
            "confirmations": 1,
            "poll_interval_s": 0.2,
            "bump_after_s": 1.0,
            "rpc_timeout_s": 3.0,
        },
        "ipfs": {"gateways": [stack.gateway_url]},
        "engine": {"max_slots": 4, "max_batch": 4, "device": "cpu"},
        "api": {"port": port},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    lines = []
    for name, values in data.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path, port


@dataclass
class NodeProcess:
    """`python -m node.cli node run` as a child process; its log (JSON lines) appended to `log`."""

    config: Path
    port: int
    log: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)

    def start(self, crash_at: JobState | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop(CRASH_HOOK_ENV, None)
        if crash_at is not None:
            env[CRASH_HOOK_ENV] = crash_at.value
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=out,
        )
        out.close()
        self.starts += 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node did not exit within {timeout}s")
            await asyncio.sleep(0.1)
        self.exit_codes.append(self.process.returncode)
        return self.process.returncode

    async def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        async with ClientSession() as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"node exited with code {self.process.returncode}; log {self.log}")
                with contextlib.suppress(Exception):
                    async with http.get(f"{self.url}/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"node not ready within {timeout}s; log {self.log}")

    async def get_json(self, path: str, timeout: float = 5.0) -> dict:
        async with ClientSession() as http, http.get(f"{self.url}{path}", timeout=timeout) as r:
            return await r.json()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log_lines(self) -> list[dict]:
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
        return entries


class TcpProxy:
    """An RPC endpoint we can take down: forwards 127.0.0.1:port to the upstream port; stop() refuses new
    connections and cuts the open ones."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.close()
            self._writers.clear()
            await self._server.wait_closed()
            self._server = None


# batched calls count once per job they name, under the single-job name
_CALL_NAMES = {"claimJobs": "claimJob", "submitResults": "submitResult"}


def _job_ids(name: str, params: dict) -> list[int | None]:
    # claims and results name their job by its key: the job id is the head word's top 64 bits
    if name == "claimJobs":
        return [k["head"] >> 192 for k in params["keys"]]
    if name == "claimJob":
        return [params["k"]["head"] >> 192]
    if name == "submitResults":
        return [i["head"] >> 192 for i in params["items"]]
    if name == "submitResult":
        return [params["item"]["head"] >> 192]
    if "t" in params:
        return [params["t"]["jobId"]]
    return [None]


def operator_calls(w3: Web3, market, operator: str, from_block: int) -> dict[str, list[tuple[int, int]]]:
    """Every transaction the operator got mined on the canonical chain, by function: [(jobId, status)], one
    entry per job a batched call names."""
    calls: dict[str, list[tuple[int, int]]] = {}
    for n in range(from_block, w3.eth.block_number + 1):
        for tx in w3.eth.get_block(n, full_transactions=True)["transactions"]:
            if tx["from"] != operator or tx["to"] != market.address:
                continue
            fn, params = market.decode_function_input(tx["input"])
            status = w3.eth.get_transaction_receipt(tx["hash"])["status"]
            for job_id in _job_ids(fn.fn_name, params):
                calls.setdefault(_CALL_NAMES.get(fn.fn_name, fn.fn_name), []).append((job_id, status))
    return calls


def settlement(stack, job_ids: list[int]) -> dict:
    """What the canonical chain says about each job, and whether it was answered at most once."""
    market = stack.contract("JobMarket")
    calls = operator_calls(stack.w3, market, stack.operator.address, stack.deployment.start_block)
    report = {
        "paid": [],
        "refunded": [],
        "unsettled": [],
        "double_claims": [],
        "double_results": [],
        "reverted_txs": 0,
        "calls": {k: len(v) for k, v in calls.items()},
    }
    for entries in calls.values():
        report["reverted_txs"] += sum(1 for _, status in entries if status != 1)
    for job_id in job_ids:
        results = market.events.ResultSubmitted.get_logs(
            from_block=stack.deployment.start_block, argument_filters={"jobId": job_id}
        )
        status = stack.status(job_id)
        if status in (JobStatus.RESULTED, JobStatus.FINAL) and len(results) == 1:
            report["paid"].append(job_id)
        elif status in (JobStatus.EXPIRED, JobStatus.REFUNDED):
            report["refunded"].append(job_id)
        else:
            report["unsettled"].append({"job": job_id, "status": status, "results": len(results)})
        if sum(1 for j, _ in calls.get("claimJob", []) if j == job_id) > 1:
            report["double_claims"].append(job_id)
        if sum(1 for j, _ in calls.get("submitResult", []) if j == job_id) > 1 or len(results) > 1:
            report["double_results"].append(job_id)
    return report


async def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def all_paid(stack, job_ids: list[int]) -> bool:
    return all(stack.status(j) in (JobStatus.RESULTED, JobStatus.FINAL) for j in job_ids)


async def crash_at_every_state(
    stack, node: NodeProcess, job_ids: list[int], *, per_state_timeout: float = 90.0
) -> list[dict]:
    """Start the node once per state with the crash hook set; each start dies (137) right after some job
    reached that state, and the next start resumes from the database."""
    rounds = []
    for state in CRASH_STATES:
        started = time.monotonic()
        node.start(crash_at=state)
        code = await node.wait_exit(per_state_timeout)
        rounds.append({"state": state.value, "exit_code": code, "s": round(time.monotonic() - started, 1)})
    return rounds


def _claim_record(work: Path, job_id: int) -> dict:
    import sqlite3

    conn = sqlite3.connect(work / "node" / "node.sqlite")
    try:
        (body,) = conn.execute(
            "SELECT body FROM txs WHERE key LIKE 'claims:%' AND (',' || substr(key, 8) || ',') LIKE ?",
            (f"%,{job_id},%",),
        ).fetchone()
        return json.loads(body)
    finally:
        conn.close()


async def run_long(args: argparse.Namespace) -> dict:
    """Crash rounds, then on one running node: an RPC outage, an underpriced claim, a job left to expire
    and refunded, and a reorg dropping a claim and a result; then SIGTERM and the settlement check."""
    import tempfile

    from inference.models import tiny_llama
    from tests.factories import make_peft_adapter
    from tests.stack import protocol_stack

    tiny = tiny_llama(0)
    work = Path(tempfile.mkdtemp(prefix="openlora-fault-"))
    started = time.monotonic()
    out: dict = {"jobs": args.jobs, "rounds": args.rounds, "workdir": str(work)}
    async with protocol_stack(work) as s:
        adapter_id, _ = s.publish(make_peft_adapter(tiny, work / "adapter", rank=4, seed=5), tiny)
        s.register_node(tiny)
        rpc_a, rpc_b = TcpProxy(s.anvil.port), TcpProxy(s.anvil.port)
        await rpc_a.start()
        await rpc_b.start()
        config, port = write_node_toml(
            s, work / "node.toml", rpc_urls=[rpc_a.url, rpc_b.url], chain={"max_fee_gwei": 500.0}
        )
        node = NodeProcess(config, port, work / "node.log")
        market = s.contract("JobMarket")
        job_ids: list[int] = []
        out["crash_rounds"] = []
        try:
            for _ in range(args.rounds):
                job_ids += [s.submit(adapter_id, f"fault prompt {i}", max_tokens=6) for i in range(args.jobs)]
                out["crash_rounds"] += await crash_at_every_state(s, node, job_ids)
            node.start()
            await node.wait_ready()
            await wait_until(lambda: all_paid(s, job_ids), 300, "all jobs paid after the crash rounds")

            # RPC outage: both endpoints down while jobs arrive; /healthz keeps answering; then back
            await rpc_a.stop()
            await rpc_b.stop()
            outage_jobs = [s.submit(adapter_id, f"outage prompt {i}", max_tokens=6) for i in range(2)]
            healthz_ok = 0
            for _ in range(10):
                healthz_ok += (await node.get_json("/healthz")).get("ok") is True
                await asyncio.sleep(0.5)
            await rpc_b.start()
            await rpc_a.start()
            await wait_until(lambda: all_paid(s, outage_jobs), 120, "jobs paid after the RPC outage")
            job_ids += outage_jobs
            out["rpc_outage"] = {"healthz_ok_during_outage": healthz_ok, "of": 10}

            # an underpriced claim: the base fee jumps right after the job is submitted
            stuck = s.submit(adapter_id, "underpriced prompt", max_tokens=6)
            s.w3.provider.make_request("anvil_setNextBlockBaseFeePerGas", [hex(60 * 10**9)])
            await wait_until(
                lambda: all_paid(s, [stuck]), 120, "the underpriced claim bumped and the job paid"
            )
            job_ids.append(stuck)
            record = await asyncio.to_thread(_claim_record, work, stuck)
            out["stuck_tx"] = {
                "bumps": record["bumps"],
                "hashes": len(record["hashes"]),
                "nonce": record["nonce"],
            }

            # a reorg deep enough to drop the last paid job's claim and its result
            claim_block = market.events.JobClaimed.get_logs(
                from_block=s.deployment.start_block, argument_filters={"jobId": stuck}
            )[-1]["blockNumber"]
            depth = s.w3.eth.block_number - claim_block + 1
            s.w3.provider.make_request("anvil_reorg", [depth, []])
            out["reorg_depth"] = depth
            await wait_until(lambda: all_paid(s, job_ids), 120, "re-payment after the reorg")
            # a job no node could finish in time: left unclaimed, expired and refunded to its submitter
            hopeless = s.submit(adapter_id, "hopeless prompt", max_tokens=500, ttl=2)
            await asyncio.sleep(3)
            s.w3.provider.make_request("evm_increaseTime", [10])
            s.w3.provider.make_request("evm_mine", [])  # calls are estimated against the latest block's time
            from tests.stack import send

            await asyncio.to_thread(
                send, s.w3, s.submitter, market.functions.expire(s.terms(hopeless).as_abi())
            )
            job_ids.append(hopeless)

            status = await node.get_json("/status")
            node.signal(signal.SIGTERM)
            out["sigterm_exit_code"] = await node.wait_exit(90)
        finally:
            node.kill()
            await rpc_a.stop()
            await rpc_b.stop()
        out["settlement"] = settlement(s, job_ids)
        logs = node.log_lines()
        out["log"] = {
            "resumed": sum(1 for e in logs if e.get("msg", "").startswith("recovery: resuming job")),
            "reorg_recoveries": sum(1 for e in logs if e.get("msg", "").startswith("recovery: reorg")),
            "failovers": sum(1 for e in logs if "failing over" in e.get("msg", "")),
            "rpc_back": sum(1 for e in logs if "is back after" in e.get("msg", "")),
            "fee_bumps": sum(1 for e in logs if "bumped fees" in e.get("msg", "")),
            "rebroadcast_after_restart": sum(1 for e in logs if "after restart" in e.get("msg", "")),
        }
        out["node_starts"] = node.starts
        out["ready_at_end"] = status.get("ready")
    out["wall_s"] = round(time.monotonic() - started, 1)
    st = out["settlement"]
    out["ok"] = (
        not st["unsettled"]
        and not st["double_claims"]
        and not st["double_results"]
        and st["refunded"] == [hopeless]
        and out["sigterm_exit_code"] == 0
        and all(r["exit_code"] == 137 for r in out["crash_rounds"])
        and out["stuck_tx"]["bumps"] >= 1
        and out["rpc_outage"]["healthz_ok_during_outage"] == 10
        and all(out["log"][k] > 0 for k in ("resumed", "reorg_recoveries", "failovers", "fee_bumps"))
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs in flight per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of SIGKILL-at-every-state")
    result = asyncio.run(run_long(parser.parse_args()))
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
