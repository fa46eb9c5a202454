"""Packaging a real PEFT adapter (tiny Llama) for the registry, and fetching it back through the cache."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from inference.ipfs.blockstore import BlockStore
from inference.ipfs.fetcher import GatewaySource
from inference.ipfs.gateway_server import TrustlessGateway
from inference.ipfs.unixfs import import_directory
from inference.models import LoadedModel
from inference.publish import PublishError, package_adapter, publish_to_store
from inference.store import AdapterStore
from tests.factories import make_peft_adapter


@pytest.fixture(scope="module")
def peft_dir(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel) -> Path:
    return make_peft_adapter(tiny, tmp_path_factory.mktemp("peft") / "adapter", rank=4, seed=3)


def test_package_a_real_peft_adapter(peft_dir: Path) -> None:
    (peft_dir / "README.md").write_text("model card: not published")
    pkg = package_adapter(peft_dir)
    weights = (peft_dir / "adapter_model.safetensors").read_bytes()
    assert set(pkg.files) == {"adapter_config.json", "adapter_model.safetensors"}
    assert pkg.content_hash == hashlib.sha256(weights).digest()
    assert pkg.rank == 4
    assert pkg.cid.startswith("bafybei") and pkg.cid == import_directory(pkg.files).root
    assert pkg.size == pkg.dag.size > len(weights)
    assert package_adapter(peft_dir, cid_version=0).cid.startswith("Qm")


async def test_published_adapter_comes_back_through_gateway_and_cache(peft_dir: Path, tmp_path: Path) -> None:
    pkg = package_adapter(peft_dir)
    store = BlockStore(tmp_path / "blocks")
    publish_to_store(pkg, store)
    gateway = TrustlessGateway(store)
    url = await gateway.start()
    try:
        async with GatewaySource(url, mode="car") as source:
            cache = AdapterStore(
                tmp_path / "cache", budget_bytes=pkg.size * 2, sources=[source], max_adapter_bytes=pkg.size
            )
            async with cache.lease(pkg.cid, pkg.content_hash) as path:
                assert (path / "adapter_model.safetensors").read_bytes() == pkg.files[
                    "adapter_model.safetensors"
                ]
    finally:
        await gateway.stop()


def test_refusals_explain_themselves(peft_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(PublishError, match=r"has no adapter_config\.json"):
        package_adapter(bad)
    (bad / "adapter_config.json").write_bytes((peft_dir / "adapter_config.json").read_bytes())
    (bad / "adapter_model.safetensors").write_bytes((peft_dir / "adapter_model.safetensors").read_bytes())
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(PublishError, match=r"pickle weights \['adapter_model.bin'\]"):
        package_adapter(bad)
    (bad / "adapter_model.bin").unlink()
    config = json.loads((bad / "adapter_config.json").read_text())
    (bad / "adapter_config.json").write_text(json.dumps({**config, "r": 0}))
    with pytest.raises(PublishError, match='positive integer "r"'):
        package_adapter(bad)
    (bad / "adapter_config.json").write_text(json.dumps(config))
    (bad / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"junk")
    with pytest.raises(PublishError, match="header"):
        package_adapter(bad)
    with pytest.raises(PublishError, match="not a folder"):
        package_adapter(tmp_path / "nowhere")


def test_publish_cli(peft_dir: Path, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "inference.publish", str(peft_dir), "--store", str(tmp_path / "blocks")],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    pkg = package_adapter(peft_dir)
    assert info == {
        "cid": pkg.cid,
        "content_hash": "0x" + pkg.content_hash.hex(),
        "size": pkg.size,
        "rank": 4,
    }
    assert BlockStore(tmp_path / "blocks").has(pkg.cid)
    failed = subprocess.run(
        [sys.executable, "-m", "inference.publish", str(tmp_path)], capture_output=True, text=True
    )
    assert failed.returncode != 0 and "has no adapter_config.json" in failed.stderr
