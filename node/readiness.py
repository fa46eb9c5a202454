"""Is this node fit to take jobs right now? `/readyz` answers from here, with every reason it is not.

`/healthz` only says the process is alive; readiness is what a load balancer, an alert or an operator
acts on: the RPC unreachable or out of sync, the watcher lagging, a transaction stuck, too little ETH
for the next jobs' gas, too little free stake for a claim, the engine down."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from node.daemon import NodeDaemon

log = logging.getLogger("openlora.node")


@dataclass
class ReadinessReport:
    reasons: dict[str, str] = field(default_factory=dict)  # cause -> what is wrong and what to do
    checked_at: float = 0.0
    balance_wei: int | None = None
    free_stake_wei: int | None = None
    claim_stake_wei: int | None = None

    @property
    def ready(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict:
        return {"ready": self.ready, "reasons": self.reasons, "checked_at": self.checked_at}


class Readiness:
    def __init__(self, daemon: NodeDaemon) -> None:
        self.d = daemon
        self.report = ReadinessReport(reasons={"starting": "the node is starting"})
        self._last: dict[str, str] = {}

    async def refresh(self) -> ReadinessReport:
        d, h = self.d, self.d.config.health
        reasons: dict[str, str] = {}
        report = ReadinessReport(checked_at=time.time())
        try:
            syncing = await d.w3.eth.syncing
            report.balance_wei = await d.w3.eth.get_balance(d.operator.address)
            report.free_stake_wei = await d.protocol.nodes.functions.freeStake(d.operator.address).call()
            report.claim_stake_wei = await d.gatekeeper.claim_stake()
            tip = await d.w3.eth.max_priority_fee
            d.gatekeeper.tip_wei = min(int(tip), int(d.config.chain.max_priority_fee_gwei * 10**9))
        except Exception as e:
            reasons["rpc"] = (
                f"RPC unreachable ({type(e).__name__}: {e}): check [chain].rpc_urls and the chain node"
            )
            syncing = False
        if syncing:
            reasons["sync"] = (
                "the RPC endpoint is still syncing: wait, or point [chain].rpc_urls at a synced node"
            )
        endpoints = getattr(d.w3.provider, "health", lambda: [])()
        if (
            endpoints
            and all(e.lagging for e in endpoints if e.head is not None)
            and any(e.head is not None for e in endpoints)
        ):
            reasons["sync"] = "every RPC endpoint lags behind: check the chain nodes"
        lag = d.watcher.lag_blocks()
        stalled = time.monotonic() - d.progress.get("watch", 0.0)
        if lag is None or lag > h.max_watcher_lag_blocks:
            reasons["watcher"] = (
                f"the event watcher is {lag if lag is not None else '?'} blocks behind the head "
                f"(limit [health].max_watcher_lag_blocks = {h.max_watcher_lag_blocks}): see its log"
            )
        elif d.watcher_failures and stalled > 3 * h.check_interval_s:
            reasons["watcher"] = f"the event watcher has failed {d.watcher_failures} time(s) in a row"
        tx = d.tx.health()
        if tx.stuck:
            reasons["tx"] = (
                f"transaction(s) {', '.join(tx.stuck)} stuck ({tx.oldest_pending_s:.0f}s pending): see the "
                "tx log; raise [chain].max_fee_gwei if fees are above it"
            )
        if tx.funds_low:
            reasons["balance"] = tx.funds_low
        if report.balance_wei is not None:
            need = h.gas_reserve_jobs * d.gatekeeper.gas.job_gas(1024) * d.gatekeeper.gas_price_now()
            if report.balance_wei < need:
                reasons["balance"] = (
                    f"operator balance {report.balance_wei} wei cannot pay gas for the next "
                    f"{h.gas_reserve_jobs} jobs (~{need} wei): send ETH to {d.operator.address}"
                )
        free, claim = report.free_stake_wei, report.claim_stake_wei
        if free is not None and claim is not None and free < claim:
            reasons["stake"] = (
                f"free stake {free} wei is below the claim stake {claim} wei: "
                "add stake (NodeRegistry.addStake) or wait for claimed jobs to finish"
            )
        if not getattr(d.service.engine, "alive", True):
            reasons["engine"] = "the inference engine is not running: see the engine's log; restart the node"
        if d.stopping:
            reasons["draining"] = "the node is draining for shutdown"
        report.reasons = reasons
        self._log_changes(reasons)
        self.report = report
        return report

    def _log_changes(self, reasons: dict[str, str]) -> None:
        for cause, text in reasons.items():
            if cause not in self._last:
                log.warning("not ready (%s): %s", cause, text)
        for cause in self._last.keys() - reasons.keys():
            log.info("ready again: %s cleared", cause)
        self._last = dict(reasons)
