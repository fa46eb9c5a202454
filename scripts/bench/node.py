"""The whole node, measured as operators run it. Prints one JSON object.

One run, one machine, one model and one trace: N jobs drawn Zipf(1.1) over A adapters, sent open-loop at
--rate jobs/s by an outside submitter. Three systems serve the same trace:
  engine  the swap engine alone, in process (InferenceService: the same verified store and validation,
          no chain): the upper bound the node can approach;
  node    Anvil + the contracts + a real daemon (`openlora node run` in process) + the submitter: every job
          is submitted, claimed, served and paid on chain;
  naive   the same daemon with `[engine].backend = "naive"` (PEFT load_adapter per job, one at a time):
          what a node without the swap engine does.
Reported: jobs/s (completed jobs / (last completion - first submission)), p50/p99 submit -> result
(mined, for the nodes), cold starts (adapters fetched), slot / host hit rates, validations per adapter,
gas per job (claim + result, from receipts), and the ratios node/engine and node/naive.

Usage: python scripts/bench/node.py [--jobs 300] [--adapters 200] [--rate 40] [--max-tokens 16]
                                    [--model tiny-llama|smollm2-135m-instruct] [--skip-naive]"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiohttp import ClientSession  # noqa: E402
from web3 import Web3  # noqa: E402

from inference.engine import EngineConfig  # noqa: E402
from inference.ipfs.fetcher import GatewaySource  # noqa: E402
from inference.models import load_base_model  # noqa: E402
from inference.service import InferenceService  # noqa: E402
from inference.store import AdapterStore  # noqa: E402
from tests.factories import make_peft_adapter  # noqa: E402
from tests.stack import protocol_stack, running_node  # noqa: E402

PRICE = 10**16


def zipf_trace(jobs: int, adapters: int, seed: int, s: float = 1.1) -> list[int]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** s for k in range(adapters)]
    return rng.choices(range(adapters), weights=weights, k=jobs)


def _quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    if not xs:
        return {"p50_s": None, "p99_s": None}
    return {"p50_s": round(xs[len(xs) // 2], 3), "p99_s": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3)}


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


async def run_engine(
    model: str,
    folders: list[Path],
    trace: list[int],
    prompts: list[str],
    rate: float,
    max_tokens: int,
    engine_cfg: EngineConfig,
    work: Path,
) -> dict:
    """The same trace through the engine alone: adapters from the same kind of verified store."""
    async with protocol_stack(work / "engine") as s:
        base = load_base_model(model)
        pkgs = [s.publish(f, base)[1] for f in folders]  # only to put them behind a real gateway
        store = AdapterStore(
            work / "engine-cache",
            budget_bytes=4 << 30,
            sources=[GatewaySource(s.gateway_url)],
            max_adapter_bytes=1 << 30,
        )
        service = InferenceService(base, store, engine_cfg)
        await service.start()
        latencies: list[float] = []
        started = time.monotonic()

        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
            t0 = time.monotonic()
            pkg = pkgs[trace[i]]
            await service.prepare(pkg.cid, pkg.content_hash)
            await service.generate(pkg.cid, pkg.content_hash, prompts[i], max_tokens)
            latencies.append(time.monotonic() - t0)

        await asyncio.gather(*(one(i, i / rate) for i in range(len(trace))))
        elapsed = time.monotonic() - started
        stats = service.engine.stats()
        await service.stop()
        await store.close()
    return {
        "jobs_per_s": round(len(trace) / elapsed, 3),
        **_quantiles(latencies),
        "cold_starts": store.downloads,
        "slot_hit_rate": round(stats.slot_hit_rate, 3),
        "host_hit_rate": round(stats.host_hit_rate, 3),
        "validations_per_adapter": round(
            sum(service.validations.values()) / max(1, len(service.validations)), 3
        ),
    }


def _per_job_gas(w3, event) -> int:
    """One job's share of the (batched) claim or result transaction that emitted `event`."""
    receipt = w3.eth.get_transaction_receipt(event["transactionHash"])
    topic = next(log for log in receipt["logs"] if log["logIndex"] == event["logIndex"])["topics"][0]
    return receipt["gasUsed"] // sum(1 for log in receipt["logs"] if log["topics"][0] == topic)


async def run_node(
    model: str,
    folders: list[Path],
    trace: list[int],
    prompts: list[str],
    rate: float,
    max_tokens: int,
    engine: dict,
    work: Path,
) -> dict:
    async with protocol_stack(work) as s:
        base = load_base_model(model)
        ids = [s.publish(f, base)[0] for f in folders]
        # stake for every claim the node may hold at once (max_committed_jobs x claimStake, plus the minimum):
        # an operator sizes its stake to its throughput; 2 ETH would cap the node at 20 claims in flight
        s.register_node(base, stake=Web3.to_wei(10, "ether"))
        config = s.node_config(
            node={"base_model": model, "max_inflight_jobs": 16},
            engine=engine,
            admission={"max_committed_jobs": 64, "assumed_tokens_per_s": 200.0},
            chain={"poll_interval_s": 0.1},
        )
        market = s.contract("JobMarket")
        async with running_node(config, base) as url:
            submitted: dict[int, float] = {}
            started = time.monotonic()
            for i, k in enumerate(trace):
                await asyncio.sleep(max(0.0, i / rate - (time.monotonic() - started)))
                job = await asyncio.to_thread(
                    s.submit, ids[k], prompts[i], max_tokens=max_tokens, price=PRICE, ttl=3600
                )
                submitted[job] = time.monotonic()
            done: dict[int, float] = {}
            last = s.deployment.start_block
            deadline = time.monotonic() + 1800
            idle_since = None
            while len(done) < len(submitted) and time.monotonic() < deadline:
                async with ClientSession() as http, http.get(f"{url}/status") as r:
                    by_state = (await r.json())["jobs_by_state"]
                active = sum(
                    v
                    for k, v in by_state.items()
                    if k not in ("paid", "skipped", "lost", "expired", "cancelled", "failed")
                )
                idle_since = (idle_since or time.monotonic()) if active == 0 else None
                if idle_since and time.monotonic() - idle_since > 10:
                    break  # the node holds nothing more: what is not done was refused or lost
                head = s.w3.eth.block_number
                if head >= last:
                    for e in market.events.ResultSubmitted.get_logs(from_block=last, to_block=head):
                        done.setdefault(e["args"]["jobId"], time.monotonic())
                    last = head + 1
                await asyncio.sleep(0.05)
            elapsed = max(done.values()) - started if done else float("nan")
            async with ClientSession() as http, http.get(f"{url}/metrics") as r:
                metrics = await r.text()
        gas = []
        claims = {
            e["args"]["jobId"]: e
            for e in market.events.JobClaimed.get_logs(from_block=s.deployment.start_block)
        }
        for job in list(done)[:50]:
            result = s.result_event(job)
            gas.append(_per_job_gas(s.w3, claims[job]) + _per_job_gas(s.w3, result))
    validated = _metric(metrics, "openlora_adapters_validated")
    return {
        "jobs_per_s": round(len(done) / elapsed, 3),
        "completed": len(done),
        "not_completed": len(submitted) - len(done),
        **_quantiles([done[j] - submitted[j] for j in done]),
        "cold_starts": int(_metric(metrics, "openlora_adapter_fetches_total")),
        "slot_hit_rate": round(_metric(metrics, "openlora_engine_slot_hit_rate"), 3),
        "host_hit_rate": round(_metric(metrics, "openlora_engine_host_hit_rate"), 3),
        "swaps_in": int(_metric(metrics, "openlora_engine_swaps_in_total")),
        "validations_per_adapter": round(
            _metric(metrics, "openlora_adapter_validations_total") / validated, 3
        )
        if validated
        else None,
        "gas_per_job": int(statistics.mean(gas)) if gas else None,
    }


async def main_async(args: argparse.Namespace) -> dict:
    trace = zipf_trace(args.jobs, args.adapters, args.seed)
    rng = random.Random(args.seed + 1)
    words = [
        "the",
        "a",
        "lora",
        "adapter",
        "node",
        "chain",
        "swap",
        "batch",
        "token",
        "model",
        "serve",
        "pay",
        "job",
        "slot",
    ]
    prompts = [" ".join(rng.choices(words, k=8)) for _ in trace]
    used = sorted(set(trace))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = load_base_model(args.model)
        folders_all = {
            k: make_peft_adapter(base, work / f"adapter-{k}", rank=(4, 8)[k % 2], seed=100 + k) for k in used
        }
        index = {k: i for i, k in enumerate(used)}
        folders = [folders_all[k] for k in used]
        local = [index[k] for k in trace]
        engine = {
            "max_slots": args.slots,
            "max_batch": args.batch,
            "max_rank": 8,
            "host_budget_mb": 1024,
            "cpu_threads": 1,
        }
        ecfg = EngineConfig(
            max_slots=args.slots, max_batch=args.batch, max_rank=8, host_budget_bytes=1 << 30, cpu_threads=1
        )
        out = {
            "bench": "node",
            "model": args.model,
            "jobs": args.jobs,
            "adapters": args.adapters,
            "adapters_used": len(used),
            "rate_jobs_per_s": args.rate,
            "max_tokens": args.max_tokens,
        }
        out["engine"] = await run_engine(
            args.model, folders, local, prompts, args.rate, args.max_tokens, ecfg, work / "e"
        )
        out["node"] = await run_node(
            args.model, folders, local, prompts, args.rate, args.max_tokens, engine, work / "n"
        )
        if not args.skip_naive:
            out["naive"] = await run_node(
                args.model,
                folders,
                local,
                prompts,
                args.rate,
                args.max_tokens,
                {**engine, "backend": "naive"},
                work / "v",
            )
    out["node_vs_engine"] = round(out["node"]["jobs_per_s"] / out["engine"]["jobs_per_s"], 3)
    if "naive" in out:
        out["node_vs_naive"] = round(out["node"]["jobs_per_s"] / out["naive"]["jobs_per_s"], 3)
    out["goals"] = {
        "node_vs_engine_0_8": out["node_vs_engine"] >= 0.8,
        "node_vs_naive_10": out.get("node_vs_naive", 0) >= 10,
        "validations_per_adapter_1": out["node"]["validations_per_adapter"] == 1,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--adapters", type=int, default=200)
    ap.add_argument("--rate", type=float, default=40.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-naive", action="store_true")
    print(json.dumps(asyncio.run(main_async(ap.parse_args()))))


if __name__ == "__main__":
    main()
