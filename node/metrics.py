"""The node's Prometheus metrics (prometheus_client), read from the daemon's state at each scrape.

Conventions: counters end in `_total`, amounts are in base units (wei, seconds, bytes, blocks), labels
for kinds (job state, refusal reason, endpoint). One collector reads what the daemon already keeps, so
nothing is counted twice and a scrape never blocks on the chain."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from node.daemon import NodeDaemon


def _gauge(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        g.add_metric(list((labels or {}).values()), value)
    return g


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(kind, name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    m = kind(name, doc, labels=[label])
    for key, v in sorted(values.items()):
        m.add_metric([key], v)
    return m


class NodeCollector(Collector):
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon

    def collect(self) -> Iterator[Metric]:
        yield from self._jobs()
        yield from self._chain()
        yield from self._engine()

    def _jobs(self) -> Iterator[Metric]:
        d, m = self.d, self.d.metrics
        yield _labelled(
            GaugeMetricFamily, "openlora_jobs", "Jobs known to this node by state.", "state", d.jobs.counts()
        )
        yield _gauge("openlora_jobs_committed", "Jobs this node holds a driver for.", len(d.committed()))
        yield _counter("openlora_jobs_paid", "Results paid to this node.", m.jobs_paid)
        yield _counter("openlora_earned_wei", "Wei credited to this node for results.", m.earned_wei)
        yield _counter("openlora_tokens_generated", "Tokens generated for jobs.", m.tokens_generated)
        yield _counter(
            "openlora_adapter_rejections", "Adapters refused by fetch or validation.", m.adapter_rejections
        )
        yield _counter("openlora_jobs_expired", "Jobs this node worked on that expired.", m.jobs_expired)
        yield _labelled(
            CounterMetricFamily,
            "openlora_jobs_failed",
            "Jobs that failed, by reason.",
            "reason",
            m.jobs_failed,
        )
        yield _counter("openlora_slashes", "Claims of this node that expired and were slashed.", m.slashes)
        yield _counter("openlora_slashed_wei", "Stake this node lost to slashes.", m.slashed_wei)
        yield _counter("openlora_reorgs", "Chain reorganisations reconciled.", m.reorgs)
        yield _counter(
            "openlora_txs_resent_after_reorg", "Transactions re-sent after a reorg.", m.txs_resent_after_reorg
        )
        yield _counter("openlora_jobs_resumed", "Jobs resumed from their persisted state.", m.jobs_resumed)
        batchers = {"claim": d.claim_batcher, "result": d.result_batcher}
        yield _labelled(
            CounterMetricFamily,
            "openlora_tx_batches",
            "Claim and result transactions sent (each may carry several jobs).",
            "kind",
            {k: b.batches_sent for k, b in batchers.items()},
        )
        yield _labelled(
            CounterMetricFamily,
            "openlora_tx_batched_jobs",
            "Jobs carried by claim and result transactions (divide by openlora_tx_batches: jobs per tx).",
            "kind",
            {k: b.items_sent for k, b in batchers.items()},
        )
        refused = dict(d.gatekeeper.refused)
        refused["capacity"] = refused.get("capacity", 0) + m.jobs_skipped_capacity
        yield _labelled(
            CounterMetricFamily,
            "openlora_admission_refusals",
            "Jobs not claimed, by reason.",
            "reason",
            refused,
        )
        yield _counter(
            "openlora_driver_errors", "Unexpected errors while driving jobs (see the log).", m.driver_errors
        )
        if m.claim_latency_s:
            s = SummaryMetricFamily(
                "openlora_claim_latency_seconds",
                "Claim sent to claim confirmed.",
                count_value=len(m.claim_latency_s),
                sum_value=sum(m.claim_latency_s),
            )
            yield s

    def _chain(self) -> Iterator[Metric]:
        d, m = self.d, self.d.metrics
        yield _counter("openlora_rpc_errors", "Failed chain RPC calls of the daemon's loops.", m.rpc_errors)
        endpoints = getattr(d.w3.provider, "health", lambda: [])()
        up = GaugeMetricFamily(
            "openlora_rpc_endpoint_up", "1 while the endpoint answers and is in sync.", labels=["endpoint"]
        )
        errors = CounterMetricFamily(
            "openlora_rpc_endpoint_errors", "Transport errors per endpoint.", labels=["endpoint"]
        )
        for e in endpoints:
            up.add_metric([e.url], 1.0 if e.up and not e.lagging else 0.0)
            errors.add_metric([e.url], e.errors_total)
        yield up
        yield errors
        head = d.watcher.latest
        yield _gauge(
            "openlora_chain_head_block", "The chain's head block number.", head.number if head else None
        )
        yield _gauge(
            "openlora_watcher_lag_blocks",
            "Head minus the last block the watcher processed.",
            d.watcher.lag_blocks(),
        )
        yield _gauge(
            "openlora_base_fee_wei", "Base fee per gas of the head block.", head.base_fee if head else None
        )
        yield _counter(
            "openlora_watcher_rewinds",
            "Times the watcher's cursor moved back (real reorgs).",
            d.watcher.rewinds,
        )
        yield _counter(
            "openlora_log_range_shrinks",
            "eth_getLogs ranges shrunk on a provider's refusal.",
            d.watcher.range.shrinks,
        )
        yield _gauge("openlora_log_range_blocks", "Current eth_getLogs range.", d.watcher.range.size)
        report = d.readiness.report
        yield _gauge("openlora_operator_balance_wei", "ETH of the operator key.", report.balance_wei)
        yield _gauge("openlora_free_stake_wei", "Stake free for new claims.", report.free_stake_wei)
        yield _gauge("openlora_ready", "1 when /readyz says ready.", 1.0 if report.ready and d.ready else 0.0)
        yield _labelled(
            GaugeMetricFamily,
            "openlora_not_ready",
            "1 for each cause the node is not ready.",
            "cause",
            {k: 1.0 for k in report.reasons},
        )
        tx = d.tx.health(time.time())
        yield _gauge("openlora_tx_pending", "Transactions of the node without a receipt.", tx.pending)
        yield _gauge(
            "openlora_tx_oldest_pending_seconds",
            "Age of the oldest pending transaction.",
            tx.oldest_pending_s,
        )
        yield _gauge(
            "openlora_tx_at_fee_cap", "Pending transactions that cannot be bumped further.", tx.at_cap
        )
        yield _gauge("openlora_tx_stuck", "Pending transactions counted as stuck.", len(tx.stuck))
        yield _counter("openlora_tx_bumps", "Fee bumps (same-nonce replacements).", d.tx.bumps_total)
        yield _counter("openlora_tx_cancels", "Transactions replaced by self-transfers.", d.tx.cancels_total)
        yield _labelled(
            CounterMetricFamily,
            "openlora_tx_broadcast_errors",
            "Refused broadcasts by class.",
            "kind",
            dict(d.tx.broadcast_errors),
        )
        mined, gas_wei = d.tx.store.totals(d.operator.address)
        yield _counter("openlora_txs_mined", "Transactions of the node with a receipt.", mined)
        yield _counter("openlora_gas_spent_wei", "Wei the node paid for gas.", gas_wei)

    def _engine(self) -> Iterator[Metric]:
        service = self.d.service
        yield _counter(
            "openlora_adapter_validations",
            "Adapter validations (once per adapter and process).",
            sum(service.validations.values()),
        )
        yield _gauge(
            "openlora_adapters_validated", "Adapters validated in this process.", len(service.validations)
        )
        yield _counter(
            "openlora_adapter_fetches", "Adapter downloads started (cache misses).", service.store.downloads
        )
        yield _counter(
            "openlora_adapter_rehashes",
            "Disk-tier entries re-hashed after a restart.",
            service.store.rehashes,
        )
        yield _counter(
            "openlora_adapter_refused_from_memory",
            "Jobs refused by a remembered adapter failure.",
            service.refused_from_memory,
        )
        stats = service.engine.stats()
        for key, doc in (("swaps_in", "Host-to-slot adapter copies."), ("evictions", "Slot reassignments.")):
            yield _counter(f"openlora_engine_{key}", doc, float(getattr(stats, key, 0)))
        for key, doc in (
            ("slot_hit_rate", "Admissions whose adapter was in a slot."),
            ("host_hit_rate", "Requests whose adapter was in the host tier."),
            ("tokens_per_s", "Generated tokens per second of decode time."),
            ("queue_depth", "Requests waiting in the engine."),
        ):
            yield _gauge(f"openlora_engine_{key}", doc, float(getattr(stats, key, 0)))


def metrics_registry(daemon: NodeDaemon) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(daemon))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
