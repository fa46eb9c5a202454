"""The local /v1/completions endpoint (OpenAI shape) on a real node: off by default, loopback only, adapters
through the same verified path as jobs, outputs equal to PEFT's."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import ClientSession

from inference.models import LoadedModel, base_model_id, tiny_llama
from inference.publish import package_adapter, publish_to_store
from inference.reference import peft_generate
from node.config import ConfigError, parse_config
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node, send


def test_completions_are_refused_on_a_non_loopback_host() -> None:
    with pytest.raises(ConfigError, match=r"binds to 127\.0\.0\.1 only"):
        parse_config({"api": {"completions": True, "host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="must contain"):
        parse_config({"api": {"explorer_url": "https://etherscan.io/tx/"}})
    assert parse_config({"api": {"completions": True}}).api.host == "127.0.0.1"


async def test_completions_with_adapters_base_and_bad_requests(tmp_path: Path, tiny: LoadedModel) -> None:
    async with protocol_stack(tmp_path) as s:
        adapter_dir = make_peft_adapter(tiny, tmp_path / "adapter", rank=8, seed=91)
        _, pkg = s.publish(adapter_dir, tiny)
        # a registration whose content hash is not the bytes' hash: the fetch must refuse it
        liar = package_adapter(make_peft_adapter(tiny, tmp_path / "liar", rank=4, seed=92))
        publish_to_store(liar, s.blocks)
        send(
            s.w3,
            s.publisher,
            s.contract("AdapterRegistry").functions.register(
                liar.cid, b"\x11" * 32, base_model_id(tiny.name), liar.rank, liar.size, 0
            ),
        )
        s.register_node(tiny)
        config = s.node_config(api={"completions": True})
        async with running_node(config, tiny_llama(0)) as url, ClientSession() as http:

            async def complete(body: object) -> tuple[int, dict]:
                async with http.post(f"{url}/v1/completions", json=body) as r:
                    return r.status, await r.json()

            async def models() -> dict:
                async with http.get(f"{url}/v1/models") as r:
                    return {m["id"]: m for m in (await r.json())["data"]}

            # the registry view fills from chain events: a node that just started may not list them yet
            for _ in range(100):
                listed = await models()
                if {pkg.cid, liar.cid} <= set(listed):
                    break
                await asyncio.sleep(0.2)
            assert {"base", pkg.cid, liar.cid} <= set(listed) and listed[pkg.cid]["rank"] == 8

            prompt = "Try this adapter without the chain."
            status, body = await complete({"model": pkg.cid, "prompt": prompt, "max_tokens": 10})
            assert status == 200, body
            assert body["object"] == "text_completion" and body["model"] == pkg.cid
            choice = body["choices"][0]
            assert choice["text"] == peft_generate(tiny, adapter_dir, prompt, 10).text
            assert body["usage"]["completion_tokens"] <= 10 and choice["finish_reason"] in ("stop", "length")
            assert (await models())[pkg.cid]["warm"] in ("device", "host")

            status, body = await complete({"model": "base", "prompt": prompt, "max_tokens": 6})
            assert status == 200 and body["usage"]["completion_tokens"] <= 6
            sampled = {"model": pkg.cid, "prompt": prompt, "max_tokens": 8, "temperature": 0.9, "seed": 5}
            first, second = await complete(sampled), await complete(sampled)
            assert first[0] == 200 and first[1]["choices"][0]["text"] == second[1]["choices"][0]["text"]

            status, body = await complete({"model": liar.cid, "prompt": prompt})
            assert status == 502 and "could not be fetched and verified" in body["error"]["message"], body
            status, body = await complete({"model": "bafyunknown", "prompt": prompt})
            assert status == 404 and body["error"]["type"] == "model_not_found"
            status, body = await complete({"model": pkg.cid, "prompt": ["batch"]})
            assert status == 400 and '"prompt"' in body["error"]["message"]
            status, body = await complete({"model": pkg.cid, "prompt": prompt, "max_tokens": 10**6})
            assert status == 400 and '"max_tokens"' in body["error"]["message"]
            async with http.post(f"{url}/v1/completions", data=b"{not json") as r:
                assert r.status == 400
            # the node still serves after all of that
            status, _ = await complete({"model": pkg.cid, "prompt": "again", "max_tokens": 2})
            assert status == 200
