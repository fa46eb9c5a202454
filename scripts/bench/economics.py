"""Does the node only take jobs that pay, and take the ones that do? Prints one JSON object.

One run on this machine: Anvil, the contracts, a real node daemon (tiny model), and an outside submitter
sending N jobs priced around the node's break-even (log-uniform between break-even / spread and
break-even x spread). Break-even is the node's own cost of one job: claim + result gas at the gas price it
pays, measured from Anvil receipts of warm-up jobs, plus its configured compute price.

For every job the node claimed, the profit is measured from receipts: nodeAmount (ResultSubmitted) -
gasUsed x effectiveGasPrice of its claim and result - compute. A job is *profitable* when its node share
covers the cost of a job (its own measured cost if claimed, else the mean measured cost). Goals: every
claimed job made money (losses = 0) and coverage = claimed profitable / profitable >= 0.95.

Usage: python scripts/bench/economics.py [--jobs 200] [--spread 4] [--margin-percent 2] [--seed 1]"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from inference.models import tiny_llama  # noqa: E402
from inference.prompt import encode_prompt  # noqa: E402
from node.gatekeeper import TRANSIENT_KINDS  # noqa: E402
from node.jobs import JobBook, connect  # noqa: E402
from node.pricing import node_share  # noqa: E402
from tests.factories import make_peft_adapter  # noqa: E402
from tests.stack import protocol_stack, running_node  # noqa: E402

COMPUTE_WEI_PER_1K = 5 * 10**13  # the node's configured compute price in this run
ADAPTER_FEE = 10**12
MAX_TOKENS = 8


def _settled(job) -> bool:
    if job is None or not job.terminal:
        return False
    return not (job.error or "").startswith(tuple(f"{k}: " for k in TRANSIENT_KINDS))


def _receipt_cost(w3, tx_hash) -> int:
    """What one job's share of a (batched) claim or result transaction cost: the fee split evenly over the
    jobs the transaction claimed or answered (its JobClaimed / ResultSubmitted logs)."""
    r = w3.eth.get_transaction_receipt(tx_hash)
    jobs = sum(1 for log in r["logs"] if len(log["topics"]) == 3) or 1  # both events: sig, jobId, node
    return r["gasUsed"] * r["effectiveGasPrice"] // jobs


async def run(jobs: int, spread: float, margin_percent: float, seed: int) -> dict:
    rng = random.Random(seed)
    tiny = tiny_llama(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        async with protocol_stack(work) as s:
            adapter_id, _ = s.publish(
                make_peft_adapter(tiny, work / "adapter", rank=4, seed=2), tiny, fee=ADAPTER_FEE
            )
            s.register_node(tiny)
            market = s.contract("JobMarket")
            bps = market.functions.protocolFeeBps().call()
            config = s.node_config(
                policy={
                    "compute_price_wei_per_1k_tokens": COMPUTE_WEI_PER_1K,
                    "margin_percent": margin_percent,
                },
                admission={"max_committed_jobs": 64},
            )
            book = JobBook(connect(config.db_path))
            prompts = [f"job number {i}: say something" for i in range(jobs)]
            tokens = [len(encode_prompt(tiny.tokenizer, p)) + MAX_TOKENS for p in prompts]
            async with running_node(config, tiny_llama(0)):
                # warm-up: what one job costs this node here, from receipts (generous price: always taken)
                warm = [
                    await asyncio.to_thread(
                        s.submit, adapter_id, f"warm up {i}", max_tokens=MAX_TOKENS, price=10**17
                    )
                    for i in range(4)
                ]
                for j in warm:
                    await s.wait_result(j)
                gas_costs = []
                for j in warm:
                    claim = market.events.JobClaimed.get_logs(from_block=0, argument_filters={"jobId": j})[0]
                    result = s.result_event(j)
                    gas_costs.append(
                        _receipt_cost(s.w3, claim["transactionHash"])
                        + _receipt_cost(s.w3, result["transactionHash"])
                    )
                gas_cost = sum(gas_costs) / len(gas_costs)
                mean_compute = COMPUTE_WEI_PER_1K * sum(tokens) / len(tokens) / 1000
                break_even_share = gas_cost + mean_compute
                keep = 1 - bps / 10_000
                ids, prices = [], []
                started = time.monotonic()
                for i in range(jobs):
                    share = break_even_share * math.exp(rng.uniform(-math.log(spread), math.log(spread)))
                    price = int((share + ADAPTER_FEE) / keep) + 1
                    ids.append(
                        await asyncio.to_thread(
                            s.submit, adapter_id, prompts[i], max_tokens=MAX_TOKENS, price=price, ttl=3600
                        )
                    )
                    prices.append(price)
                deadline = time.monotonic() + 600
                while time.monotonic() < deadline:  # a job left for a passing reason is not final yet
                    if all(_settled(book.get(j)) for j in ids):
                        break
                    await asyncio.sleep(0.5)
                elapsed = time.monotonic() - started
            claimed = {
                e["args"]["jobId"]: e
                for e in market.events.JobClaimed.get_logs(from_block=0)
                if e["args"]["node"] == s.operator.address
            }
            rows = []
            for j, price, tok in zip(ids, prices, tokens, strict=True):
                compute = COMPUTE_WEI_PER_1K * tok // 1000
                share = node_share(price, ADAPTER_FEE, bps)
                if j in claimed:
                    result = s.result_event(j)
                    gas = _receipt_cost(s.w3, claimed[j]["transactionHash"])
                    payout = result["args"]["nodeAmount"] if result else 0
                    if result:
                        gas += _receipt_cost(s.w3, result["transactionHash"])
                    cost = gas + compute
                    rows.append(
                        {
                            "claimed": True,
                            "profit": payout - cost,
                            "profitable": share >= cost,
                            "paid": result is not None,
                        }
                    )
                else:
                    rows.append(
                        {
                            "claimed": False,
                            "profit": 0,
                            "profitable": share >= gas_cost + compute,
                            "paid": False,
                        }
                    )
            states = book.counts()
    taken = [r for r in rows if r["claimed"]]
    profitable = [r for r in rows if r["profitable"]]
    covered = [r for r in profitable if r["claimed"]]
    return {
        "bench": "economics",
        "jobs": jobs,
        "spread": spread,
        "margin_percent": margin_percent,
        "break_even_share_wei": int(break_even_share),
        "gas_cost_per_job_wei": int(gas_cost),
        "claimed": len(taken),
        "paid": sum(r["paid"] for r in taken),
        "losses": sum(r["profit"] < 0 for r in taken),
        "min_profit_wei": min((r["profit"] for r in taken), default=None),
        "profitable": len(profitable),
        "profitable_claimed": len(covered),
        "coverage": round(len(covered) / len(profitable), 4) if profitable else None,
        "claimed_unprofitable": sum(1 for r in taken if not r["profitable"]),
        "goal_losses_0": all(r["profit"] >= 0 for r in taken),
        "goal_coverage_0_95": bool(profitable) and len(covered) / len(profitable) >= 0.95,
        "states": {k: v for k, v in states.items() if v},
        "elapsed_s": round(elapsed, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--spread", type=float, default=4.0)
    ap.add_argument("--margin-percent", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(run(args.jobs, args.spread, args.margin_percent, args.seed))))


if __name__ == "__main__":
    main()
