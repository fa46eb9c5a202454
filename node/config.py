"""The node's TOML config: typed sections, validated at start with messages that say what to fix."""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """The config file is wrong; the message names the key and what is expected."""


@dataclass
class NodeSection:
    data_dir: Path = Path("run/node")
    base_model: str = "smollm2-135m-instruct"
    log_format: str = "text"  # "text" or "json"
    log_level: str = "INFO"
    max_inflight_jobs: int = 8


@dataclass
class ChainSection:
    rpc_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8545"])
    deployment: Path = Path("run/deployment.json")
    keystore: Path = Path("run/node/operator.keystore.json")
    password_file: Path | None = None  # else env OPENLORA_KEYSTORE_PASSWORD
    signer_keystore: Path | None = None  # the key that signs results; defaults to the operator key
    confirmations: int = 1
    finality_blocks: int = 64  # settled txs are re-checked against reorgs until this deep
    reorg_audit_every: int = 5  # tx-monitor passes between those re-checks
    poll_interval_s: float = 1.0
    max_fee_gwei: float = 200.0
    max_priority_fee_gwei: float = 5.0
    bump_after_s: float = 30.0
    rpc_timeout_s: float = 10.0  # per request; a timed-out endpoint is failed over and backed off
    max_log_range: int = 2000  # most blocks per eth_getLogs; shrinks by itself when a provider refuses
    max_lag_blocks: int = 10  # an endpoint this far behind the best one leaves the rotation
    head_tag: str = "latest"  # "latest" (with confirmations), "safe" or "finalized" where the chain has them
    stuck_after_s: float = 120.0  # a tx pending this long counts as stuck (no new claims, not ready)
    batch_window_s: float = 0.25  # jobs ready to claim / post within this window share one transaction
    max_batch: int = 32  # most jobs in one claimJobs / submitResults transaction (the market allows 256)


@dataclass
class IpfsSection:
    gateways: list[str] = field(default_factory=list)
    kubo_rpc: str | None = None
    cache_dir: Path | None = None  # default: <data_dir>/adapters
    cache_budget_mb: int = 2048
    max_adapter_mb: int = 512
    max_concurrent_fetches: int = 4  # pre-claim fetches at once, apart from running jobs
    fetch_timeout_s: float = 300.0  # one adapter's fetch + verify + validate, overall
    failed_cid_ttl_s: float = 600.0  # an adapter that failed (unreachable, wrong bytes, refused) is not
    # fetched again for this long: a poison adapter costs one fetch, not one per job
    peers: list[str] = field(default_factory=list)  # direct bitswap peers: multiaddrs with /p2p/<peer id>


@dataclass
class PolicySection:
    min_attestations: int = 0
    allowed_publishers: list[str] = field(default_factory=list)  # empty = anyone
    denied_cids: list[str] = field(default_factory=list)
    min_price_wei: int = 0  # an extra floor on the job's price, whatever the economics say
    # Economics (node/pricing.py): claim only when the node's own share of the price covers the job's cost,
    # (claim + result gas) x the fee it would pay now + compute, plus the margin.
    compute_price_wei_per_1k_tokens: int = 10**12  # what 1,000 tokens (prompt + output) cost you to serve
    margin_percent: float = 20.0  # on top of the cost: base-fee moves between claim and result, your profit
    claim_gas: int = 60_000  # until measured from the node's own receipts
    result_gas: int = 90_000  # a result without output, until measured
    result_gas_per_byte: int = 40  # calldata + log + hashing per output byte (upper bound)


@dataclass
class AdmissionSection:
    """Claim only what can be finished before the deadline (node/admission.py)."""

    max_committed_jobs: int = 16  # jobs held at once (claimed or about to be); more are left for others
    assumed_tokens_per_s: float = 20.0  # decode speed until the engine has measured its own
    cold_start_s: float = 5.0  # fetch + verify + validate of an adapter that is not warm, until measured
    chain_round_trip_s: float = 4.0  # claim + result mined, until measured
    safety_factor: float = 1.5


@dataclass
class HealthSection:
    """What /readyz checks and how the systemd watchdog is fed (node/readiness.py)."""

    max_watcher_lag_blocks: int = 50  # the watcher this far behind the head: not ready
    gas_reserve_jobs: int = 5  # the balance must pay claim + result gas of this many jobs
    check_interval_s: float = 2.0  # readiness refresh (balance, stake, sync) period
    stalled_after_s: float = 60.0  # a daemon loop without progress this long stops feeding the watchdog


@dataclass
class EngineSection:
    max_slots: int = 8
    max_rank: int = 64
    host_budget_mb: int = 512
    max_batch: int = 8
    max_queue: int = 256
    max_tokens_cap: int = 512
    device: str = "auto"  # "auto", "cpu", "cuda"
    cpu_threads: int = 0  # torch intra-op threads (process-wide); 0 = torch's default
    dtype: str = "auto"  # "auto" (bf16 on CUDA, else float32), "bfloat16", "float16", "float32"
    pool_budget_mb: int = 0  # device memory for resident adapters; 0 = max_slots adapters of max_rank
    backend: str = "builtin"  # "builtin" (the swap engine), "vllm" (optional extra, CUDA), "naive" (baseline)
    tensor_parallel_size: int = 1  # vllm backend only


@dataclass
class ApiSection:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8700
    completions: bool = False  # local OpenAI-style /v1/completions, off by default; loopback only
    explorer_url: str | None = None  # e.g. "https://etherscan.io/tx/{hash}": tx links on the status page


@dataclass
class P2PSection:
    enabled: bool = False
    listen: str = "/ip4/0.0.0.0/tcp/4001"
    bootstrap: list[str] = field(default_factory=list)
    identity: Path | None = (
        None  # ed25519 seed; default <data_dir>/p2p.key. Its peer id is registered on chain.
    )
    warm_backoff_s: float = 3.0  # head start given to a registered peer that holds a job's adapter warm
    announce_interval_s: float = (
        10.0  # the same on every node of the network (peers rate-limit at half of it)
    )


@dataclass
class VerifySection:
    # "auto": build a TOPLOC proof with every result when toploc is installed; "on": required; "off": never
    prove: str = "auto"
    # where the evidence blocks go (a flatfs block store): default <data_dir>/evidence, served at the API's
    # /ipfs; point it at the store your IPFS gateway or Kubo node serves to pin proofs where adapters live
    evidence_dir: Path | None = None
    # TEST HOOK (end-to-end tests of disputes only): "edit-output" posts an output other than the one the
    # proof covers. Never set it on a real node: its results will be disputed and its stake slashed.
    test_cheat: str = ""


@dataclass
class NodeConfig:
    node: NodeSection = field(default_factory=NodeSection)
    chain: ChainSection = field(default_factory=ChainSection)
    ipfs: IpfsSection = field(default_factory=IpfsSection)
    policy: PolicySection = field(default_factory=PolicySection)
    admission: AdmissionSection = field(default_factory=AdmissionSection)
    engine: EngineSection = field(default_factory=EngineSection)
    health: HealthSection = field(default_factory=HealthSection)
    api: ApiSection = field(default_factory=ApiSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    verify: VerifySection = field(default_factory=VerifySection)
    source: Path | None = None

    @property
    def evidence_dir(self) -> Path:
        return self.verify.evidence_dir or self.node.data_dir / "evidence"

    @property
    def cache_dir(self) -> Path:
        return self.ipfs.cache_dir or self.node.data_dir / "adapters"

    @property
    def identity_path(self) -> Path:
        return self.p2p.identity or self.node.data_dir / "p2p.key"

    @property
    def db_path(self) -> Path:
        return self.node.data_dir / "node.sqlite"


def _coerce(value: object, hint: object, where: str, base: Path) -> object:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, options[0], where, base)
    if hint is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]", base) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _section(cls: type, data: dict, name: str, base: Path) -> object:
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints[k], f"[{name}].{k}", base) for k, v in data.items()}
    return cls(**kwargs)


def parse_config(data: dict, *, base: Path | None = None, source: Path | None = None) -> NodeConfig:
    base = base if base is not None else Path.cwd()
    sections = {f.name: f for f in dataclasses.fields(NodeConfig) if f.name != "source"}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(sections)}")
    hints = typing.get_type_hints(NodeConfig)
    values = {name: _section(hints[name], data.get(name, {}), name, base) for name in sections}
    config = NodeConfig(**values, source=source)
    if not data.get("node", {}).get("data_dir"):
        config.node.data_dir = base / config.node.data_dir
    _check(config)
    return config


def peer_of(addr: str) -> str:
    """The peer id of an `[ipfs].peers` entry; ConfigError unless it is a multiaddr ending in /p2p/<id>."""
    import multiaddr

    try:
        return multiaddr.Multiaddr(addr).value_for_protocol("p2p")
    except Exception:
        raise ConfigError(
            f"[ipfs].peers: {addr!r} must be a multiaddr ending in /p2p/<peer id>, e.g. "
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooW... (a Kubo node prints its addresses with `ipfs id`)"
        ) from None


def _check(c: NodeConfig) -> None:
    if c.node.log_format not in ("text", "json"):
        raise ConfigError(f"[node].log_format: expected 'text' or 'json', got {c.node.log_format!r}")
    if not c.chain.rpc_urls:
        raise ConfigError("[chain].rpc_urls: list at least one JSON-RPC endpoint")
    for url in c.chain.rpc_urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"[chain].rpc_urls: {url!r} must be an http(s):// JSON-RPC endpoint (the watcher polls "
                "eth_getLogs over HTTP; WebSocket endpoints are not used by this version)"
            )
    for url in c.chain.rpc_urls + c.ipfs.gateways:
        if not url.startswith(("http://", "https://", "ws://", "wss://")):
            raise ConfigError(f"endpoint {url!r} must start with http(s):// or ws(s)://")
    for addr in c.ipfs.peers:
        peer_of(addr)
    if c.chain.confirmations < 1:
        raise ConfigError("[chain].confirmations must be >= 1 (1 = accept the head block)")
    if c.chain.finality_blocks < c.chain.confirmations:
        raise ConfigError("[chain].finality_blocks must be >= [chain].confirmations")
    if c.chain.reorg_audit_every < 1:
        raise ConfigError("[chain].reorg_audit_every must be >= 1 (tx-monitor passes between re-checks)")
    if c.chain.poll_interval_s <= 0:
        raise ConfigError("[chain].poll_interval_s must be > 0")
    if c.chain.max_fee_gwei <= 0 or c.chain.max_priority_fee_gwei < 0:
        raise ConfigError("[chain].max_fee_gwei must be > 0 and max_priority_fee_gwei >= 0")
    if c.chain.max_priority_fee_gwei > c.chain.max_fee_gwei:
        raise ConfigError("[chain].max_priority_fee_gwei cannot exceed [chain].max_fee_gwei")
    if c.node.max_inflight_jobs < 1:
        raise ConfigError("[node].max_inflight_jobs must be >= 1")
    if c.node.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"[node].log_level: expected DEBUG, INFO, WARNING or ERROR, got {c.node.log_level!r}"
        )
    if c.ipfs.max_concurrent_fetches < 1 or c.ipfs.fetch_timeout_s <= 0 or c.ipfs.failed_cid_ttl_s < 0:
        raise ConfigError(
            "[ipfs].max_concurrent_fetches must be >= 1, fetch_timeout_s > 0, failed_cid_ttl_s >= 0"
        )
    if c.policy.min_price_wei < 0:
        raise ConfigError("[policy].min_price_wei must be >= 0")
    p = c.policy
    if p.compute_price_wei_per_1k_tokens < 0 or p.margin_percent < 0:
        raise ConfigError("[policy].compute_price_wei_per_1k_tokens and margin_percent must be >= 0")
    if min(p.claim_gas, p.result_gas, p.result_gas_per_byte) <= 0:
        raise ConfigError("[policy].claim_gas, result_gas and result_gas_per_byte must be > 0")
    if c.chain.max_log_range < 1 or c.chain.max_lag_blocks < 0 or c.chain.stuck_after_s <= 0:
        raise ConfigError("[chain].max_log_range must be >= 1, max_lag_blocks >= 0, stuck_after_s > 0")
    if c.chain.batch_window_s < 0 or not 1 <= c.chain.max_batch <= 256:
        raise ConfigError("[chain].batch_window_s must be >= 0 and max_batch between 1 and 256")
    if c.verify.prove not in ("auto", "on", "off"):
        raise ConfigError(f"[verify].prove must be auto, on or off, not {c.verify.prove!r}")
    if c.verify.test_cheat not in ("", "edit-output"):
        raise ConfigError(
            f'[verify].test_cheat must be empty (or "edit-output" in tests), not {c.verify.test_cheat!r}'
        )
    if c.chain.head_tag not in ("latest", "safe", "finalized"):
        raise ConfigError(f"[chain].head_tag: expected latest, safe or finalized, got {c.chain.head_tag!r}")
    h = c.health
    if h.max_watcher_lag_blocks < 1 or h.gas_reserve_jobs < 0 or h.check_interval_s <= 0:
        raise ConfigError(
            "[health].max_watcher_lag_blocks must be >= 1, gas_reserve_jobs >= 0, check_interval_s > 0"
        )
    a = c.admission
    if a.max_committed_jobs < 1:
        raise ConfigError("[admission].max_committed_jobs must be >= 1")
    if a.assumed_tokens_per_s <= 0 or a.cold_start_s < 0 or a.chain_round_trip_s < 0:
        raise ConfigError(
            "[admission]: assumed_tokens_per_s must be > 0, cold_start_s and chain_round_trip_s >= 0"
        )
    if a.safety_factor < 1:
        raise ConfigError("[admission].safety_factor must be >= 1 (it pads estimates, never shrinks them)")
    if c.engine.max_slots < 1 or c.engine.max_batch < 1:
        raise ConfigError("[engine].max_slots and max_batch must be >= 1")
    if c.engine.cpu_threads < 0:
        raise ConfigError("[engine].cpu_threads must be >= 0 (0 leaves torch's default)")
    if c.engine.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"[engine].device: expected auto, cpu or cuda, got {c.engine.device!r}")
    if c.engine.dtype not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(
            f"[engine].dtype: expected auto, bfloat16, float16 or float32, got {c.engine.dtype!r}"
        )
    if c.engine.pool_budget_mb < 0:
        raise ConfigError("[engine].pool_budget_mb must be >= 0 (0 sizes the pool from max_slots x max_rank)")
    if not 0 < c.api.port < 65536:
        raise ConfigError(f"[api].port: {c.api.port} is not a TCP port")
    if c.engine.backend not in ("builtin", "vllm", "naive"):
        raise ConfigError(
            f"[engine].backend: expected 'builtin', 'vllm' or 'naive' (a baseline), got {c.engine.backend!r}"
        )
    if c.api.completions and c.api.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(
            f"[api].completions serves inference without payment: it binds to 127.0.0.1 only, but [api].host"
            f' is {c.api.host!r}; set host = "127.0.0.1" or turn completions off'
        )
    if c.api.explorer_url is not None and "{hash}" not in c.api.explorer_url:
        raise ConfigError('[api].explorer_url must contain {hash}, e.g. "https://etherscan.io/tx/{hash}"')


def load_config(path: Path) -> NodeConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found (create one with `openlora node init`)") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(data, base=path.resolve().parent, source=path)
