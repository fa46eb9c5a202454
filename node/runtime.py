"""Assemble a node from its config and run it until SIGTERM/SIGINT (drains in-flight jobs first)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from eth_utils import keccak
from web3 import AsyncWeb3

from chain.deployment import Deployment
from chain.protocol import Protocol
from chain.rpc import FailoverProvider
from chain.tx import FeePolicy, TxManager
from chain.tx_store import SqliteTxStore
from chain.watcher import CursorStore, EventWatcher
from inference.engine import EngineConfig
from inference.ipfs.fetcher import GatewaySource, KuboRpcSource
from inference.models import LoadedModel, load_base_model
from inference.service import InferenceService
from inference.store import AdapterStore
from node.api import start_api
from node.config import NodeConfig
from node.daemon import NodeDaemon
from node.errors import StartupError
from node.jobs import JobBook, connect
from node.keys import load_keystore, read_password
from node.lock import DataDirLock, DataDirLocked
from node.registry_view import RegistryView

log = logging.getLogger("openlora.node")


def engine_config(config: NodeConfig) -> EngineConfig:
    e = config.engine
    device = e.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return EngineConfig(
        max_slots=e.max_slots,
        max_rank=e.max_rank,
        host_budget_bytes=e.host_budget_mb << 20,
        max_batch=e.max_batch,
        max_queue=e.max_queue,
        device=device,
        cpu_threads=e.cpu_threads,
        dtype=e.dtype,
        pool_budget_bytes=e.pool_budget_mb << 20,
    )


def engine_factory(config: NodeConfig):
    """None for the built-in swap engine; for `[engine].backend = "vllm"`, a factory for the vLLM backend,
    checked here so that a machine without vLLM fails at start with one line."""
    if config.engine.backend == "naive":
        from inference.engine.naive_backend import NaivePeftEngine

        return NaivePeftEngine
    if config.engine.backend != "vllm":
        return None
    from inference.embedded import prepare_smollm2
    from inference.engine.vllm_backend import VllmEngine, VllmUnavailable, require_vllm
    from inference.models import SMOLLM2

    if config.node.base_model != SMOLLM2:
        raise StartupError(
            f'[engine].backend = "vllm" serves a model folder; {config.node.base_model!r} has none: '
            f"use {SMOLLM2!r} or the builtin backend"
        )
    try:
        require_vllm()
    except VllmUnavailable as e:
        raise StartupError(str(e)) from None
    model_dir = prepare_smollm2()

    def make(base: LoadedModel, engine_cfg: EngineConfig, loader=None) -> VllmEngine:
        return VllmEngine(
            base,
            engine_cfg,
            loader,
            model_dir=model_dir,
            tensor_parallel_size=config.engine.tensor_parallel_size,
        )

    return make


async def build_daemon(config: NodeConfig, *, base: LoadedModel | None = None) -> NodeDaemon:
    factory = engine_factory(config)  # first: a backend that cannot run here is one line, before any work
    password = read_password(config.chain.password_file)
    operator = load_keystore(config.chain.keystore, password)
    signer = (
        load_keystore(config.chain.signer_keystore, password) if config.chain.signer_keystore else operator
    )
    try:
        deployment = Deployment.load(config.chain.deployment)
    except FileNotFoundError as e:
        raise StartupError(str(e)) from None
    except (ValueError, TypeError) as e:
        raise StartupError(
            f"deployment file {config.chain.deployment} is not a deployment written by `deploy()` "
            f"({type(e).__name__}: {e}); fix [chain].deployment"
        ) from None

    w3 = AsyncWeb3(
        FailoverProvider(
            config.chain.rpc_urls,
            timeout_s=config.chain.rpc_timeout_s,
            max_lag_blocks=config.chain.max_lag_blocks,
            probe_interval_s=max(1.0, 5 * config.chain.poll_interval_s),
        )
    )
    rpc_log = logging.getLogger("openlora.rpc")
    level = rpc_log.level
    rpc_log.setLevel(logging.ERROR)  # a failed start-up probe is reported once, below, not per endpoint
    try:
        chain_id = await w3.eth.chain_id
    except Exception:
        await w3.provider.disconnect()
        raise StartupError(
            f"cannot reach any RPC endpoint ({', '.join(config.chain.rpc_urls)}): is the chain node running? "
            "check [chain].rpc_urls"
        ) from None
    finally:
        rpc_log.setLevel(level)
    if chain_id != deployment.chain_id:
        await w3.provider.disconnect()
        raise StartupError(
            f"RPC is chain {chain_id} but the deployment file {config.chain.deployment} is for "
            f"chain {deployment.chain_id}: point [chain].rpc_urls at the right network"
        )

    conn = connect(config.db_path)
    protocol = Protocol(w3, deployment)
    watcher = EventWatcher(
        w3,
        protocol.contracts,
        CursorStore(conn),
        start_block=deployment.start_block,
        confirmations=config.chain.confirmations,
        max_range=config.chain.max_log_range,
        head_tag=config.chain.head_tag,
    )
    fees = FeePolicy(
        max_fee_gwei=config.chain.max_fee_gwei,
        max_priority_fee_gwei=config.chain.max_priority_fee_gwei,
        bump_after_s=config.chain.bump_after_s,
        stuck_after_s=config.chain.stuck_after_s,
    )
    tx = TxManager(
        w3,
        operator,
        SqliteTxStore(conn),
        fees=fees,
        confirmations=config.chain.confirmations,
        chain_id=chain_id,
    )

    sources = []
    if config.ipfs.kubo_rpc:
        sources.append(KuboRpcSource(config.ipfs.kubo_rpc))
    sources += [GatewaySource(url) for url in config.ipfs.gateways]
    store = AdapterStore(
        config.cache_dir,
        budget_bytes=config.ipfs.cache_budget_mb << 20,
        sources=sources,
        max_adapter_bytes=config.ipfs.max_adapter_mb << 20,
    )
    if base is None:
        log.info("loading base model %s", config.node.base_model)
        try:
            base = await asyncio.to_thread(load_base_model, config.node.base_model)
        except ValueError as e:
            await w3.provider.disconnect()
            raise StartupError(f"[node].base_model: {e}") from None
    registry = RegistryView(conn)
    p2p = None
    blocks = None
    if config.p2p.enabled:
        from inference.ipfs.blockstore import BlockStore
        from node.p2p import P2PConfig, P2PNode

        blocks = BlockStore(config.node.data_dir / "blocks")
        p2p = P2PNode(
            P2PConfig(
                identity_path=config.identity_path,
                listen=config.p2p.listen,
                bootstrap=config.p2p.bootstrap,
                announce_interval_s=config.p2p.announce_interval_s,
                announce_ttl_s=3 * config.p2p.announce_interval_s,
            ),
            blocks,
            signer,
            keccak(text=config.node.base_model),
            registry.is_registered_signer,
        )
    if config.ipfs.peers:  # direct bitswap peers (e.g. your own Kubo): after kubo_rpc, before the gateways
        from node.p2p.direct import DirectPeersSource

        own = {"identity_path": config.identity_path, "signer": signer} if p2p is None else {}
        peers = DirectPeersSource(config.ipfs.peers, node=p2p, **own)
        store.sources.insert(1 if config.ipfs.kubo_rpc else 0, peers)
    service = InferenceService(
        base,
        store,
        engine_config(config),
        blocks=blocks,
        engine_factory=factory,
        failure_ttl_s=config.ipfs.failed_cid_ttl_s,
        fetch_timeout_s=config.ipfs.fetch_timeout_s,
    )
    return NodeDaemon(
        config,
        w3,
        protocol,
        operator,
        signer,
        JobBook(conn),
        registry,
        watcher,
        tx,
        service,
        p2p=p2p,
        warm_backoff_s=config.p2p.warm_backoff_s,
    )


async def run_node(
    config: NodeConfig, *, stop: asyncio.Event | None = None, base: LoadedModel | None = None
) -> None:
    try:
        lock = DataDirLock(config.node.data_dir).acquire()  # one daemon per data folder
    except DataDirLocked as e:
        raise StartupError(str(e)) from None
    try:
        await _run_locked(config, stop, base)
    finally:
        lock.release()


async def _run_locked(config: NodeConfig, stop: asyncio.Event | None, base: LoadedModel | None) -> None:
    daemon = await build_daemon(config, base=base)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        runner = await start_api(daemon, config.api.host, config.api.port) if config.api.enabled else None
    except OSError as e:
        await daemon.service.store.close()
        await daemon.w3.provider.disconnect()
        raise StartupError(
            f"cannot listen on {config.api.host}:{config.api.port} ({e.strerror}): change [api].port "
            "or stop what uses it"
        ) from None
    if runner:
        log.info(
            "API on http://%s:%d (status page at /; /healthz /readyz /metrics /status%s)",
            config.api.host,
            config.api.port,
            " /v1/completions" if config.api.completions else "",
        )
    try:
        await daemon.run(stop)
    finally:
        if runner:
            await runner.cleanup()
        await daemon.service.store.close()
        await daemon.w3.provider.disconnect()
        log.info("node stopped")
