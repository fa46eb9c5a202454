"""Packaging a real PEFT adapter (tiny Llama) for the registry, and fetching it back through the cache."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.parse
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
from tests.local_http import serve


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


class KuboAddApi:
    """A stand-in for Kubo's RPC `/api/v0/add` (Kubo itself does not install here): a real HTTP server that
    checks the request the way Kubo reads it (multipart with a directory part and its files, import
    options as query parameters) and answers NDJSON {"Name", "Hash", "Size"} lines. `lie` makes it report
    another root, as a Kubo with different Import.* settings would."""

    def __init__(self, lie: bool = False) -> None:
        self.lie = lie
        self.seen: dict = {}

    async def add(self, request):
        from aiohttp import web

        self.seen["params"] = dict(request.query)
        reader = await request.multipart()
        parts: list[tuple[str, str, bytes]] = []
        while (part := await reader.next()) is not None:
            # Kubo (boxo/files fileName) query-unescapes multipart file names: "adapter%2Fx" is "adapter/x"
            name = urllib.parse.unquote_plus(part.filename)
            parts.append((name, part.headers.get("Content-Type", ""), await part.read()))
        self.seen["parts"] = [(name, ctype) for name, ctype, _ in parts]
        files = {name.split("/", 1)[1]: body for name, ctype, body in parts if "/" in name}
        version = int(request.query["cid-version"])
        dag = import_directory(files, cid_version=version)
        root = import_directory({"x": b"another import"}).root if self.lie else dag.root
        lines = [{"Name": f"adapter/{n}", "Hash": "bafk", "Size": str(len(b))} for n, b in files.items()]
        lines.append({"Name": "adapter", "Hash": root, "Size": str(dag.size)})
        return web.Response(text="\n".join(json.dumps(line) for line in lines) + "\n")

    async def __aenter__(self) -> str:
        from aiohttp import web

        app = web.Application()
        app.router.add_post("/api/v0/add", self.add)
        self._runner, url = await serve(app)
        return url

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


@pytest.mark.parametrize("cid_version", [1, 0])
async def test_pin_to_kubo_sends_the_import_settings_and_checks_the_root(
    peft_dir: Path, cid_version: int
) -> None:
    from inference.publish import pin_to_kubo

    pkg = package_adapter(peft_dir, cid_version=cid_version)
    kubo = KuboAddApi()
    async with kubo as url:
        assert await pin_to_kubo(pkg, url) == pkg.cid
    params = kubo.seen["params"]
    assert params["cid-version"] == str(cid_version) and params["pin"] == "true"
    assert params["raw-leaves"] == ("true" if cid_version == 1 else "false")
    assert params["chunker"] == "size-262144"
    assert kubo.seen["parts"][0] == ("adapter", "application/x-directory")
    assert sorted(n for n, _ in kubo.seen["parts"][1:]) == [f"adapter/{n}" for n in sorted(pkg.files)]


async def test_pin_to_kubo_refuses_a_different_root(peft_dir: Path) -> None:
    from inference.publish import pin_to_kubo

    pkg = package_adapter(peft_dir)
    async with KuboAddApi(lie=True) as url:
        with pytest.raises(PublishError, match="Kubo computed"):
            await pin_to_kubo(pkg, url)
