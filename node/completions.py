"""A local, chain-free inference endpoint in the OpenAI completions shape, for operators and publishers to
try an adapter: `POST /v1/completions` with `model` = an adapter's CID (as registered on chain) or "base",
and `GET /v1/models`. Off unless `[api].completions = true`; the config then only allows a loopback host,
since it serves inference nobody pays for. Adapters go through the same fetch -> verify -> validate path
as jobs, so a bad CID is refused here exactly as a job on it would be."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from inference.validate.strict_json import loads_object

if TYPE_CHECKING:
    from node.daemon import NodeDaemon

BASE_MODEL_NAME = "base"


class CompletionRequestError(ValueError):
    """The request body is wrong; the message says which field and why (HTTP 400)."""


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str
    max_tokens: int = 16  # OpenAI's default
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def parse(cls, body: object, max_tokens_cap: int) -> CompletionRequest:
        if not isinstance(body, dict):
            raise CompletionRequestError("the body must be a JSON object")
        model, prompt = body.get("model"), body.get("prompt")
        if not isinstance(model, str) or not model:
            raise CompletionRequestError('"model" must name an adapter CID or "base"')
        if not isinstance(prompt, str):
            raise CompletionRequestError('"prompt" must be a string (one prompt per request)')
        max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= max_tokens_cap:
            raise CompletionRequestError(f'"max_tokens" must be an integer from 1 to {max_tokens_cap}')
        temperature = body.get("temperature", 0.0)
        top_p = body.get("top_p", 1.0)
        if not isinstance(temperature, int | float) or not 0 <= temperature <= 2:
            raise CompletionRequestError('"temperature" must be a number from 0 to 2')
        if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise CompletionRequestError('"top_p" must be a number in (0, 1]')
        seed = body.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise CompletionRequestError('"seed" must be an integer')
        stop = body.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else stop
        if (
            not isinstance(stop, list | tuple)
            or not all(isinstance(s, str) and s for s in stop)
            or len(stop) > 4
        ):
            raise CompletionRequestError('"stop" must be a non-empty string or a list of up to 4 of them')
        return cls(model, prompt, max_tokens, float(temperature), float(top_p), seed, tuple(stop))


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind}}, status=status)


def add_completion_routes(app: web.Application, daemon: NodeDaemon) -> None:
    enabled = daemon.config.api.completions

    async def disabled(_: web.Request) -> web.Response:
        return _error(
            404,
            "the local completions endpoint is off: set [api].completions = true (127.0.0.1 only), restart",
            "not_enabled",
        )

    if not enabled:
        app.router.add_post("/v1/completions", disabled)
        app.router.add_get("/v1/models", disabled)
        return

    async def models(_: web.Request) -> web.Response:
        base = daemon.base_model_id
        data = [{"id": BASE_MODEL_NAME, "object": "model", "owned_by": daemon.config.node.base_model}]
        device, host = daemon.service.warm_adapters()
        for record in daemon.registry.adapters(base):
            warm = "device" if record.cid in device else "host" if record.cid in host else "cold"
            data.append(
                {
                    "id": record.cid,
                    "object": "model",
                    "owned_by": record.publisher,
                    "adapter_id": record.adapter_id,
                    "rank": record.rank,
                    "warm": warm,
                }
            )
        return web.json_response({"object": "list", "data": data})

    async def completions(request: web.Request) -> web.Response:
        from inference.engine import EngineBusy
        from inference.ipfs.fetcher import FetchError
        from inference.validate import AdapterRejected

        try:
            body = loads_object(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not valid JSON", "invalid_request_error")
        try:
            req = CompletionRequest.parse(body, daemon.config.engine.max_tokens_cap)
        except CompletionRequestError as e:
            return _error(400, str(e), "invalid_request_error")
        cid, content_hash = None, None
        if req.model != BASE_MODEL_NAME:
            record = daemon.registry.adapter_by_cid(req.model)
            if record is None:
                return _error(404, f"no live adapter with CID {req.model} in the registry", "model_not_found")
            if record.base_model != daemon.base_model_id:
                return _error(
                    400, f"adapter {req.model} is for another base model than this node's", "invalid_model"
                )
            cid, content_hash = record.cid, record.content_hash
            try:
                await daemon.service.prepare(cid, content_hash)
            except FetchError as e:
                return _error(502, f"adapter {cid} could not be fetched and verified: {e}", "adapter_fetch")
            except AdapterRejected as e:
                return _error(422, f"adapter {cid} refused: {e}", "adapter_rejected")
        started = time.time()
        try:
            result = await daemon.service.generate(
                cid,
                content_hash,
                req.prompt,
                req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                seed=req.seed,
                stop=req.stop,
            )
        except EngineBusy as e:
            return _error(429, f"the engine is busy, retry later: {e}", "busy")
        return web.json_response(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(started),
                "model": req.model,
                "choices": [
                    {"index": 0, "text": result.text, "finish_reason": result.finish_reason, "logprobs": None}
                ],
                "usage": {
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": len(result.token_ids),
                    "total_tokens": result.prompt_tokens + len(result.token_ids),
                },
            }
        )

    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/v1/models", models)
