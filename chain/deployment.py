"""Where the protocol lives on a chain: addresses and the block to start watching from.

Written by `deploy()` as JSON, read by the node and the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from chain.artifacts import load_artifact


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    adapter_registry: str
    node_registry: str
    job_market: str
    start_block: int
    arbiter: str = ""

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    def contract(self, eth, name: str):
        """Contract `name` (AdapterRegistry, NodeRegistry, JobMarket) at its deployed address, with its ABI
        from forge's output; `eth` is a sync or an async web3 `.eth`."""
        address = {
            "AdapterRegistry": self.adapter_registry,
            "NodeRegistry": self.node_registry,
            "JobMarket": self.job_market,
            "ValidatorArbiter": self.arbiter,
        }[name]
        return eth.contract(address=address, abi=load_artifact(name).abi)

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"deployment file {path} not found: "
                "deploy the contracts (`openlora dev` does) or fix the path"
            ) from None
        return cls(**data)


CREATE2_DEPLOYER = "0x4e59b44847b379578588920cA78FbF26c0B4956C"  # the standard deterministic deployer
SALTS = {
    name: keccak(text=f"openlora.v2.{name}")
    for name in ("AdapterRegistry", "MarketOps", "JobMarket", "ValidatorArbiter")
}


@dataclass(frozen=True)
class ProtocolParams:
    """JobMarket v2 deployment parameters (devnet defaults; docs/deploy.md gives L2 values)."""

    protocol_fee_bps: int = 100
    min_claim_stake_wei: int = Web3.to_wei(0.01, "ether")
    claim_stake_bps: int = 15_000
    compensation_bps: int = 1_000
    release_penalty_wei: int = Web3.to_wei(0.001, "ether")
    default_service_window_s: int = 300
    min_service_window_s: int = 10
    challenge_window_s: int = 60
    dispute_bond_wei: int = Web3.to_wei(0.05, "ether")
    challenger_reward_bps: int = 5_000
    dispute_timeout_s: int = 600
    min_stake_wei: int = Web3.to_wei(1, "ether")
    unstake_delay_s: int = 3600
    arbiter_quorum: int = 1
    treasury: str | None = None  # defaults to the deployer

    def config(self, owner: str, adapter_registry: str) -> tuple:
        """MarketBase.Config as the constructor's tuple argument."""
        fields = tuple(getattr(self, name) for name, _ in CONFIG_FIELDS)
        return (owner, adapter_registry, self.treasury or owner, *fields)

    def script_env(self) -> dict[str, str]:
        """The same parameters as contracts/script/Deploy.s.sol's environment variables."""
        env = {var: str(getattr(self, name)) for name, var in CONFIG_FIELDS}
        env["ARBITER_QUORUM"] = str(self.arbiter_quorum)
        if self.treasury:
            env["TREASURY"] = self.treasury
        return env


# MarketBase.Config after (owner, adapterRegistry, treasury), in order, with Deploy.s.sol's variable names
CONFIG_FIELDS = (
    ("protocol_fee_bps", "PROTOCOL_FEE_BPS"),
    ("min_claim_stake_wei", "MIN_CLAIM_STAKE"),
    ("claim_stake_bps", "CLAIM_STAKE_BPS"),
    ("compensation_bps", "COMPENSATION_BPS"),
    ("release_penalty_wei", "RELEASE_PENALTY"),
    ("default_service_window_s", "DEFAULT_SERVICE_WINDOW"),
    ("min_service_window_s", "MIN_SERVICE_WINDOW"),
    ("challenge_window_s", "CHALLENGE_WINDOW"),
    ("dispute_bond_wei", "DISPUTE_BOND"),
    ("challenger_reward_bps", "CHALLENGER_REWARD_BPS"),
    ("dispute_timeout_s", "DISPUTE_TIMEOUT"),
    ("min_stake_wei", "MIN_STAKE"),
    ("unstake_delay_s", "UNSTAKE_DELAY"),
)


def create2_address(salt: bytes, init_code: bytes) -> str:
    raw = keccak(b"\xff" + bytes.fromhex(CREATE2_DEPLOYER[2:]) + salt + keccak(init_code))[12:]
    return Web3.to_checksum_address(raw)


def _init_code(w3: Web3, name: str, *args: object) -> bytes:
    art = load_artifact(name)
    tx = (
        w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
        .constructor(*args)
        .build_transaction({"from": CREATE2_DEPLOYER, "gas": 0, "gasPrice": 0, "nonce": 0, "chainId": 1})
    )
    return bytes.fromhex(tx["data"][2:])


def _deploy2(w3: Web3, account: LocalAccount, name: str, *args: object) -> str:
    """Deploy through the deterministic deployer (same address on every chain for the same code and args);
    a contract already there is reused."""
    if not w3.eth.get_code(CREATE2_DEPLOYER):
        raise RuntimeError(
            f"no deterministic deployer at {CREATE2_DEPLOYER} on this chain: deploy it first "
            "(https://github.com/Arachnid/deterministic-deployment-proxy) or use a chain that has it"
        )
    init = _init_code(w3, name, *args)
    address = create2_address(SALTS[name], init)
    if w3.eth.get_code(address):
        return address
    tx = {
        "from": account.address,
        "to": CREATE2_DEPLOYER,
        "data": "0x" + (SALTS[name] + init).hex(),
        "nonce": w3.eth.get_transaction_count(account.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    tx["gas"] = int(w3.eth.estimate_gas(tx) * 1.2)
    tx.update(_fees(w3))
    _send(w3, account, tx)
    if not w3.eth.get_code(address):
        raise RuntimeError(f"{name} was not created at {address}")
    return address


def _fees(w3: Web3) -> dict:
    base = w3.eth.get_block("latest")["baseFeePerGas"]
    tip = w3.to_wei(1, "gwei")
    return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}


def _send(w3: Web3, account: LocalAccount, tx: dict) -> dict:
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise RuntimeError(f"deployment transaction {tx_hash.hex()} reverted")
    return receipt


def _call(w3: Web3, account: LocalAccount, fn) -> dict:
    tx = fn.build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending")}
    )
    return _send(w3, account, tx)


def deploy(
    w3: Web3, deployer: LocalAccount, params: ProtocolParams | None = None, validators: list[str] = ()
) -> Deployment:
    """Deploy AdapterRegistry, MarketOps, JobMarket (which creates its NodeRegistry) and the
    ValidatorArbiter at deterministic CREATE2 addresses, the same ones contracts/script/Deploy.s.sol uses;
    allow `validators`."""
    p = params or ProtocolParams()
    start_block = w3.eth.block_number
    owner = deployer.address
    adapters = _deploy2(w3, deployer, "AdapterRegistry", owner)
    config = p.config(owner, adapters)
    ops = _deploy2(w3, deployer, "MarketOps", config)
    market = _deploy2(w3, deployer, "JobMarket", config, ops)
    arbiter = _deploy2(w3, deployer, "ValidatorArbiter", market, adapters, p.arbiter_quorum)
    market_c = w3.eth.contract(address=market, abi=load_artifact("JobMarket").abi)
    if market_c.functions.arbiter().call() != arbiter:
        _call(w3, deployer, market_c.functions.setArbiter(arbiter))
    registry = w3.eth.contract(address=adapters, abi=load_artifact("AdapterRegistry").abi)
    for v in validators:
        if not registry.functions.isValidator(v).call():
            _call(w3, deployer, registry.functions.setValidator(v, True))
    return Deployment(
        chain_id=w3.eth.chain_id,
        adapter_registry=adapters,
        node_registry=market_c.functions.nodeRegistry().call(),
        job_market=market,
        arbiter=arbiter,
        start_block=start_block,
    )


def deploy_with_forge_script(
    rpc_url: str, private_key: str, params: ProtocolParams | None = None, validators: list[str] = ()
) -> Deployment:
    """Deploy with the project's forge script (contracts/script/Deploy.s.sol via scripts/deploy.sh), as an
    operator deploys to a real chain; returns what it wrote to deployments/<chainId>.json. Same contracts,
    salts and addresses as `deploy`."""
    import os
    import subprocess

    from chain.artifacts import REPO_ROOT

    p = params or ProtocolParams()
    env = {**os.environ, **p.script_env()}
    if validators:
        env["VALIDATORS"] = ",".join(validators)
    script = REPO_ROOT / "scripts" / "deploy.sh"
    done = subprocess.run(
        [str(script), "--rpc-url", rpc_url, "--private-key", private_key],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/deploy.sh failed ({done.returncode}): {done.stderr[-2000:] or done.stdout[-2000:]}"
        )
    chain_id = Web3(Web3.HTTPProvider(rpc_url)).eth.chain_id
    return Deployment.load(REPO_ROOT / "deployments" / f"{chain_id}.json")
