"""A stand-in for a vLLM replica: the OpenAI endpoints vLLM serves, answered from a script.

``python -m spotd.serve.stub_replica --port P [--latency-ms X] [--tokens N]
[--token-delay-ms D] [--model NAME] [--id NAME]``

- ``GET /health`` 200 (503 once shutting down), ``GET /v1/models``;
- ``POST /v1/completions`` and ``POST /v1/chat/completions``: plain JSON with ``usage``, or
  with ``"stream": true`` SSE chunks ending ``data: [DONE]`` (a usage chunk before it when
  ``stream_options.include_usage``). The text is deterministic: token *i* of a request is
  ``" t<i>"``; ``max_tokens`` (default ``--tokens``) sets how many. A request continues an
  answer as vLLM would (the LB's stream handoff): a prompt ending in ``" t0 t1 t2"``, or a
  chat whose final assistant message holds them with ``continue_final_message: true``, goes
  on with ``" t3"`` — so a continued answer equals an uninterrupted one. With
  ``"return_token_ids": true`` (vLLM >= 0.10.2) each chunk carries its ``token_ids`` (token
  ``" t<i>"`` is id ``1000 + i``) and the first its ``prompt_token_ids`` (ids below 1000, one
  a word); a prompt of token ids ending in generated ones (``[.., 1000, 1001, 1002]``) goes on
  with ``" t3"`` too;
- ``GET /metrics``: ``vllm:num_requests_running``, ``vllm:num_requests_waiting`` (requests
  over ``--max-running`` wait), ``vllm:kv_cache_usage_perc`` (running / ``--max-running``),
  ``vllm:request_success_total``;
- ``ANY /echo/...``: method, path, query, headers and body digest as JSON (proxy tests);
- every answer carries ``X-Replica-Id``.

Timing: ``--latency-ms`` before the first token (time to first token), then
``--token-delay-ms`` per token; a non-streamed answer takes the same total time.

SIGTERM: the listening socket closes (no new connections), in-flight requests finish (up to
``--grace`` seconds), then the process exits 0.

Imports only aiohttp (and the standard library), so it starts fast and anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

_DONE = b"data: [DONE]\n\n"
_TOKEN = re.compile(r" t\d+")
_TRAILING_TOKENS = re.compile(r"(?: t\d+)+$")
TOKEN_ID0 = 1000  # the id of token " t0"; prompt words are ids 1, 2, ...


class Stub:
    def __init__(
        self,
        *,
        replica_id: str,
        model: str,
        tokens: int,
        latency_ms: float,
        token_delay_ms: float,
        max_running: int,
    ) -> None:
        self.replica_id = replica_id
        self.model = model
        self.tokens = tokens
        self.latency = latency_ms / 1000.0
        self.token_delay = token_delay_ms / 1000.0
        self.max_running = max_running
        self.running = 0
        self.waiting = 0
        self.success = 0
        self.served = 0
        self.shutting_down = False
        self.created = int(time.time())
        self._slots = asyncio.Semaphore(max_running) if max_running > 0 else None
        self._hdr = {"X-Replica-Id": replica_id}

    def kv_cache_usage(self) -> float:
        """The KV cache as a batch slot each running request fills (0 when unbounded)."""
        return min(1.0, self.running / self.max_running) if self.max_running > 0 else 0.0


STUB: web.AppKey[Stub] = web.AppKey("stub", Stub)


def _count_prompt_tokens(body: dict[str, Any]) -> int:
    if "messages" in body:
        text = " ".join(
            str(m.get("content", "")) for m in body.get("messages") or [] if isinstance(m, dict)
        )
    else:
        p = body.get("prompt", "")
        text = " ".join(map(str, p)) if isinstance(p, list) else str(p)
    return max(1, len(text.split()))


def _continued_from(body: dict[str, Any], *, chat: bool) -> int:
    """How many tokens of this answer the request already holds (a continuation)."""
    if chat:
        msgs = body.get("messages") or []
        last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
        if body.get("continue_final_message") and last.get("role") == "assistant":
            return len(_TOKEN.findall(str(last.get("content") or "")))
        return 0
    p = body.get("prompt", "")
    if isinstance(p, list) and p and all(isinstance(t, int) for t in p):  # token ids
        return p[-1] - TOKEN_ID0 + 1 if p[-1] >= TOKEN_ID0 else 0
    m = _TRAILING_TOKENS.search(p if isinstance(p, str) else "")
    return len(_TOKEN.findall(m.group(0))) if m else 0


async def _slot(stub: Stub) -> None:
    if stub._slots is None:
        return
    stub.waiting += 1
    try:
        await stub._slots.acquire()
    finally:
        stub.waiting -= 1


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=False)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, chat=True)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    stub = request.app[STUB]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else {}
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
    except ValueError as e:
        return web.json_response(
            {"object": "error", "message": str(e), "code": 400}, status=400, headers=stub._hdr
        )
    n = body.get("max_tokens") or body.get("max_completion_tokens") or stub.tokens
    n = max(0, int(n))
    start = _continued_from(body, chat=chat)
    stream = bool(body.get("stream"))
    digest = hashlib.blake2b(raw, digest_size=6).hexdigest()
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{digest}"
    model = str(body.get("model") or stub.model)
    prompt_tokens = _count_prompt_tokens(body)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": n,
        "total_tokens": prompt_tokens + n,
    }
    await _slot(stub)
    stub.running += 1
    stub.served += 1
    try:
        if not stream:
            await _sleep(stub.latency + stub.token_delay * n)
            text = "".join(f" t{start + i}" for i in range(n))
            if chat:
                choice: dict[str, Any] = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length",
                    "logprobs": None,
                }
                obj = "chat.completion"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
                obj = "text_completion"
            stub.success += 1
            return web.json_response(
                {
                    "id": rid,
                    "object": obj,
                    "created": stub.created,
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
                headers=stub._hdr,
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            headers={**stub._hdr, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        await _sleep(stub.latency)
        async for chunk in _chunks(
            stub,
            rid=rid,
            model=model,
            n=n,
            chat=chat,
            usage=usage if include_usage else None,
            start=start,
            prompt_ids=list(range(1, prompt_tokens + 1)) if body.get("return_token_ids") else None,
        ):
            await resp.write(chunk)
        stub.success += 1
        await resp.write_eof()
        return resp
    finally:
        stub.running -= 1
        if stub._slots is not None:
            stub._slots.release()


async def _chunks(
    stub: Stub,
    *,
    rid: str,
    model: str,
    n: int,
    chat: bool,
    usage: dict[str, int] | None,
    start: int = 0,
    prompt_ids: list[int] | None = None,
) -> AsyncIterator[bytes]:
    """The answer's chunks; with ``prompt_ids`` (the request asked for token ids), as vLLM
    sends them: each chunk's ``token_ids``, and the prompt's with the first."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": rid, "object": obj, "created": stub.created, "model": model}
    first = True

    def event(choice: dict[str, Any], token: int | None = None) -> bytes:
        nonlocal first
        out: dict[str, Any] = {**head, "choices": [choice]}
        if prompt_ids is not None:
            if token is not None:
                choice["token_ids"] = [TOKEN_ID0 + token]
            if first:
                key = out if chat else choice  # vLLM: top level for chat, per choice else
                key["prompt_token_ids"] = prompt_ids
                first = False
        return b"data: " + json.dumps(out).encode() + b"\n\n"

    if chat:
        yield event(
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        )
    for i in range(n):
        if i:
            await _sleep(stub.token_delay)
        last = i == n - 1
        if chat:
            yield event(
                {
                    "index": 0,
                    "delta": {"content": f" t{start + i}"},
                    "logprobs": None,
                    "finish_reason": "length" if last else None,
                },
                start + i,
            )
        else:
            yield event(
                {
                    "index": 0,
                    "text": f" t{start + i}",
                    "logprobs": None,
                    "finish_reason": "length" if last else None,
                },
                start + i,
            )
    if usage is not None:
        yield b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n"
    yield _DONE


async def health(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    return web.Response(status=503 if stub.shutting_down else 200, headers=stub._hdr)


async def models(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": stub.model,
                    "object": "model",
                    "created": stub.created,
                    "owned_by": "spotd-stub",
                    "root": stub.model,
                    "parent": None,
                    "max_model_len": 2048,
                }
            ],
        },
        headers=stub._hdr,
    )


async def metrics(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    label = f'{{model_name="{stub.model}"}}'
    text = (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{label} {float(stub.running)}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{label} {float(stub.waiting)}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{label} {stub.kv_cache_usage()}\n"
        "# HELP vllm:request_success_total Count of successfully processed requests.\n"
        "# TYPE vllm:request_success_total counter\n"
        f"vllm:request_success_total{label} {float(stub.success)}\n"
    )
    return web.Response(text=text, content_type="text/plain", charset="utf-8", headers=stub._hdr)


async def echo(request: web.Request) -> web.Response:
    stub = request.app[STUB]
    body = await request.read()
    return web.json_response(
        {
            "replica": stub.replica_id,
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": dict(request.headers),
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        },
        headers=stub._hdr,
    )


def make_app(stub: Stub) -> web.Application:
    app = web.Application(client_max_size=64 << 20)
    app[STUB] = stub
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/echo{tail:.*}", echo)
    return app


async def serve(args: argparse.Namespace) -> None:
    stub = Stub(
        replica_id=args.id or str(args.port),
        model=args.model,
        tokens=args.tokens,
        latency_ms=args.latency_ms,
        token_delay_ms=args.token_delay_ms,
        max_running=args.max_running,
    )
    runner = web.AppRunner(make_app(stub), access_log=None, shutdown_timeout=args.grace)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, backlog=1024)
    await site.start()
    print(f"stub replica {stub.replica_id} listening on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    stub.shutting_down = True
    # cleanup(): close the listener, close idle keep-alive connections, wait for in-flight
    # handlers (up to shutdown_timeout), then close the rest.
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m spotd.serve.stub_replica",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--id", default="", help="replica id for X-Replica-Id (default: the port)")
    p.add_argument("--model", default="stub-model")
    p.add_argument("--tokens", type=int, default=16, help="default max_tokens")
    p.add_argument("--latency-ms", type=float, default=0.0, help="time to first token")
    p.add_argument("--token-delay-ms", type=float, default=0.0, help="delay between tokens")
    p.add_argument("--max-running", type=int, default=0, help="0 = unlimited")
    p.add_argument("--grace", type=float, default=30.0, help="SIGTERM: wait this long")
    p.add_argument("--uvloop", action="store_true", help="use uvloop when installed")
    args = p.parse_args(argv)
    if args.uvloop or os.environ.get("SPOTD_STUB_UVLOOP"):
        try:
            import uvloop

            uvloop.run(serve(args))
            return
        except ImportError:
            pass
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
