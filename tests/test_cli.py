"""The publisher's and submitter's commands through the real entry point, against Anvil and a node."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from chain.devnet import dev_private_key
from inference.ipfs.blockstore import BlockStore
from inference.ipfs.gateway_server import TrustlessGateway
from inference.models import LoadedModel, tiny_llama
from inference.reference import peft_generate
from node.cli import main
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


async def test_publish_verify_submit_wait(tmp_path: Path, tiny: LoadedModel, capsys, monkeypatch) -> None:
    adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=51)
    monkeypatch.setenv("PUBLISHER_KEY", dev_private_key(2))
    monkeypatch.setenv("SUBMITTER_KEY", dev_private_key(3))
    monkeypatch.setenv("COLUMNS", "200")
    store_dir = tmp_path / "cli-blocks"
    async with protocol_stack(tmp_path) as s:
        chain = ["--rpc", s.anvil.url, "--deployment", str(tmp_path / "deployment.json")]
        code, out = await asyncio.to_thread(
            _run,
            capsys,
            "adapter",
            "publish",
            str(adapter_dir),
            "--base-model",
            "tiny-llama",
            "--store",
            str(store_dir),
            "--private-key-env",
            "PUBLISHER_KEY",
            *chain,
        )
        assert code == 0, out
        cid = re.search(r"cid (\S+)", out).group(1)
        adapter_id = int(re.search(r"adapter id (\d+)", out).group(1))

        gateway = TrustlessGateway(BlockStore(store_dir))
        url = await gateway.start()
        try:
            code, out = await asyncio.to_thread(
                _run,
                capsys,
                "adapter",
                "verify",
                cid,
                "--gateway",
                url,
                "--adapter-id",
                str(adapter_id),
                *chain,
            )
            assert code == 0 and "equals the registry's content hash" in out, out

            # inspect the published CID through the gateway: the same facts as the folder
            code, by_cid = await asyncio.to_thread(
                _run, capsys, "adapter", "inspect", cid, "--gateway", url, "--json"
            )
            assert code == 0, by_cid
            code, by_dir = await asyncio.to_thread(
                _run, capsys, "adapter", "inspect", str(adapter_dir), "--json"
            )
            cid_info, dir_info = json.loads(by_cid.splitlines()[-1]), json.loads(by_dir.splitlines()[-1])
            assert cid_info["cid"] == dir_info["cid"] == cid
            for key in ("sha256", "rank", "alpha", "targets", "tensors"):
                assert cid_info[key] == dir_info[key], key
            code, out = await asyncio.to_thread(_run, capsys, "adapter", "inspect", "not-a-cid-or-dir")
            assert code == 1 and "neither an adapter folder nor a CID" in out

            s.register_node(tiny)
            async with running_node(s.node_config(gateways=[url]), tiny_llama(0)):
                code, out = await asyncio.to_thread(
                    _run,
                    capsys,
                    "submit",
                    "--adapter",
                    str(adapter_id),
                    "--prompt",
                    "hello from the CLI",
                    "--max-tokens",
                    "10",
                    "--private-key-env",
                    "SUBMITTER_KEY",
                    *chain,
                )
                assert code == 0, out
                job_id = int(out.strip().splitlines()[-1])
                code, out = await asyncio.to_thread(_run, capsys, "job", "wait", str(job_id), *chain)
        finally:
            await gateway.stop()
        assert code == 0, out
        assert "signature verified locally" in out
        expected = peft_generate(tiny, adapter_dir, "hello from the CLI", 10).text
        assert s.output(job_id).decode() == expected
        code, out = await asyncio.to_thread(_run, capsys, "job", "status", str(job_id), *chain)
        assert code == 0 and "resulted" in out


def test_bad_input_exit_codes(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.bin").write_bytes(b"\x80\x04pickle")
    code, out = _run(capsys, "adapter", "publish", str(tmp_path), "--no-register")
    assert code == 2 and "adapter refused" in out
    code, out = _run(
        capsys,
        "job",
        "status",
        "1",
        "--rpc",
        "http://127.0.0.1:1",
        "--deployment",
        str(tmp_path / "missing.json"),
    )
    assert code == 2 and "missing.json" in out
