"""The daemon's status page in a real headless Chromium, driven over the DevTools protocol, while a real
node serves jobs on Anvil: the slot table and the job list update live, and a screenshot is kept."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import ClientSession

from inference.models import LoadedModel, tiny_llama
from scripts.fault_injection import all_paid, wait_until
from tests.factories import make_peft_adapter
from tests.stack import protocol_stack, running_node

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh)"
)


class Browser:
    """Headless Chromium on one page, over the DevTools protocol's websocket."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.ids = itertools.count(1)
        self.http: ClientSession | None = None
        self.ws = None

    async def open(self, url: str) -> None:
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,1400",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and len(port_file.read_text().splitlines()) >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("chromium did not open its DevTools port")
        port = int(port_file.read_text().splitlines()[0])
        self.http = ClientSession()
        for _ in range(100):
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self.ws = await self.http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if self.proc.poll() is None:
                self.proc.kill()


SLOTS_JS = "[...document.querySelectorAll('#slots tbody tr')].map(r => r.cells[1].textContent)"
JOBS_JS = "[...document.querySelectorAll('#jobs tbody tr')].map(r => [r.dataset.job, r.cells[1].textContent])"
UPDATES_JS = "Number(document.body.dataset.updates || 0)"


async def test_status_page_updates_live_while_jobs_run(tmp_path: Path, tiny: LoadedModel) -> None:
    async with protocol_stack(tmp_path) as s:
        adapter_id, pkg = s.publish(make_peft_adapter(tiny, tmp_path / "adapter", rank=4, seed=61), tiny)
        s.register_node(tiny)
        config = s.node_config(api={"explorer_url": "https://explorer.example/tx/{hash}"})
        async with running_node(config, tiny_llama(0)) as url:
            browser = Browser(tmp_path / "chromium-profile")
            try:
                await browser.open(f"{url}/")
                await wait_until_async(lambda: browser.evaluate(UPDATES_JS), 30, "the page's first update")
                before_slots = await browser.evaluate(SLOTS_JS)
                assert before_slots and all(text == "empty" for text in before_slots), before_slots
                assert await browser.evaluate(JOBS_JS) == []

                jobs = [s.submit(adapter_id, f"status page prompt {i}", max_tokens=8) for i in range(3)]
                await wait_until(lambda: all_paid(s, jobs), 90, "the jobs paid")
                updates = await browser.evaluate(UPDATES_JS)

                async def page_shows_paid_jobs() -> bool:
                    rows = await browser.evaluate(JOBS_JS)
                    return {(str(j), "paid") for j in jobs} <= {tuple(r) for r in rows}

                await wait_until_async(page_shows_paid_jobs, 10, "the job list to show the paid jobs")
                slots = await browser.evaluate(SLOTS_JS)
                assert any(pkg.cid in text and f"#{adapter_id}" in text for text in slots), slots
                # still polling (live, not one render): another update lands (bounded wait: loaded machines)
                await wait_until_async(
                    lambda: _more_updates(browser, updates), 20, "the page to keep polling after the jobs"
                )
                tx_cells = await browser.evaluate(
                    "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.cells[5].textContent)"
                )
                assert all(cell.startswith("0x") for cell in tx_cells), tx_cells
                links = await browser.evaluate(
                    "[...document.querySelectorAll('#jobs tbody tr')]"
                    ".map(r => r.cells[5].querySelector('a').href)"
                )
                result_txs = {s.result_event(j)["transactionHash"].to_0x_hex() for j in jobs}
                assert {link.rsplit("/", 1)[-1] for link in links} == result_txs, links

                shot = await browser.call("Page.captureScreenshot", format="png")
                png = base64.b64decode(shot["data"])
                assert png[:8] == b"\x89PNG\r\n\x1a\n"
                (tmp_path / "status-page.png").write_bytes(png)
            finally:
                await browser.close()

            async with ClientSession() as http, http.post(f"{url}/v1/completions", json={}) as r:
                assert r.status == 404  # completions are off by default
                assert "[api].completions = true" in (await r.json())["error"]["message"]


async def _more_updates(browser: Browser, seen: int) -> bool:
    return await browser.evaluate(UPDATES_JS) > seen


async def wait_until_async(predicate, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
