"""Where the protocol lives on a chain: addresses and the block to start watching from.

Written by `deploy()` as JSON, read by the node and the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from chain.artifacts import load_artifact


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    adapter_registry: str
    node_registry: str
    job_market: str
    start_block: int

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


@dataclass(frozen=True)
class ProtocolParams:
    min_stake_wei: int = Web3.to_wei(1, "ether")
    unstake_delay_s: int = 3600
    protocol_fee_bps: int = 100
    claim_stake_wei: int = Web3.to_wei(0.1, "ether")
    slash_to_submitter_bps: int = 5000
    treasury: str | None = None  # defaults to the deployer


def _deploy_one(w3: Web3, account: LocalAccount, name: str, *args: object) -> str:
    art = load_artifact(name)
    contract = w3.eth.contract(abi=art.abi, bytecode=art.bytecode)
    tx = contract.constructor(*args).build_transaction(
        {"from": account.address, "nonce": w3.eth.get_transaction_count(account.address, "pending")}
    )
    receipt = _send(w3, account, tx)
    return receipt["contractAddress"]


def _send(w3: Web3, account: LocalAccount, tx: dict) -> dict:
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    if receipt["status"] != 1:
        raise RuntimeError(f"deployment transaction {tx_hash.hex()} reverted")
    return receipt


def deploy(w3: Web3, deployer: LocalAccount, params: ProtocolParams | None = None) -> Deployment:
    """Deploy AdapterRegistry, NodeRegistry and JobMarket and wire them together."""
    p = params or ProtocolParams()
    start_block = w3.eth.block_number
    adapters = _deploy_one(w3, deployer, "AdapterRegistry")
    nodes = _deploy_one(w3, deployer, "NodeRegistry", p.min_stake_wei, p.unstake_delay_s)
    market = _deploy_one(
        w3,
        deployer,
        "JobMarket",
        adapters,
        nodes,
        p.treasury or deployer.address,
        p.protocol_fee_bps,
        p.claim_stake_wei,
        p.slash_to_submitter_bps,
    )
    registry = w3.eth.contract(address=nodes, abi=load_artifact("NodeRegistry").abi)
    tx = registry.functions.setMarket(market).build_transaction(
        {"from": deployer.address, "nonce": w3.eth.get_transaction_count(deployer.address, "pending")}
    )
    _send(w3, deployer, tx)
    return Deployment(
        chain_id=w3.eth.chain_id,
        adapter_registry=adapters,
        node_registry=nodes,
        job_market=market,
        start_block=start_block,
    )
