"""Local HTTP servers for the built-in handler tests: an OpenAI-compatible LLM and a webhook.

Both are small aiohttp apps on 127.0.0.1 that record what they received. The
LLM answers ``POST /v1/chat/completions`` (streaming or not) and follows a
script of misbehaviours first (``"429"``, ``"503"``, ``"garbage"``, …).
``python -m tests.fakes llm|webhook --port N`` runs one on its own, for trying
the built-ins by hand. :func:`make_ctx` builds the context a worker would pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from foundry.settings import Settings
from workers.handlers import TaskContext

MODEL = "fake-model-1"


def make_ctx(
    agent_type: str,
    task_input: Any = None,
    settings: Settings | None = None,
    description: str = "",
    notes: list[str | None] | None = None,
    submitted_by: str | None = None,
) -> TaskContext:
    """A TaskContext as a worker builds it; progress notes are appended to ``notes``."""

    async def progress(note: str | None) -> None:
        if notes is not None:
            notes.append(note)

    return TaskContext(
        task_id="t-1",
        agent_type=agent_type,
        description=description,
        input=task_input,
        attempt=1,
        worker_id="test-worker",
        settings=settings or Settings(),
        _progress=progress,
        submitted_by=submitted_by,
    )


@dataclass
class FakeLLM:
    """Behaviours are taken from ``script`` one request at a time, then ``fallback``."""

    script: list[str] = field(default_factory=list)
    fallback: str = "ok"
    reply: str = "Plan: write the code, test it, ship it."
    delay: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: dict[str, Any] = json.loads(raw)
        except ValueError:
            body = {}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append({"headers": dict(request.headers), "body": body, "peer": peer})
        mode = self.script.pop(0) if self.script else self.fallback
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode.isdigit():
            error = {"error": {"message": f"fake {mode}", "type": "server_error"}}
            return web.json_response(error, status=int(mode))
        if mode == "garbage":
            return web.Response(text="<html>this is not JSON</html>", content_type="text/html")
        if mode == "redirect":  # a server that points elsewhere (not to be followed)
            raise web.HTTPTemporaryRedirect("http://127.0.0.1:9/v1/chat/completions?token=t0p")
        if mode == "no-choices":
            return web.json_response({"id": "cmpl-1", "object": "chat.completion"})
        if mode == "echo-key":  # a server that leaks the key into its error message
            key = request.headers.get("Authorization", "").removeprefix("Bearer ")
            return web.json_response({"error": {"message": f"bad key {key}"}}, status=401)
        if body.get("stream"):
            return await self._stream(request, body, broken=mode == "bad-stream")
        return web.json_response(self._completion(body))

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion = len(self.reply.split())
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "usage": self._usage(body),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": self.reply},
                }
            ],
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], broken: bool
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def event(data: Any) -> None:
            text = data if isinstance(data, str) else json.dumps(data)
            await resp.write(f"data: {text}\n\n".encode())

        await resp.write(b": keep-alive comment\n\n")
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            if broken and i == 1:
                await event("{not json")
                break
            piece = word if i == len(words) - 1 else word + " "
            await event(
                {
                    "id": "c1",
                    "object": "chat.completion.chunk",
                    "model": MODEL,
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
            )
        await event(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": MODEL,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            }
        )
        if body.get("stream_options", {}).get("include_usage"):
            await event({"id": "c1", "model": MODEL, "choices": [], "usage": self._usage(body)})
        await event("[DONE]")
        await resp.write_eof()
        return resp


@dataclass
class WebhookReceiver:
    """Records each POST (headers and raw body) and answers ``status`` with ``reply``."""

    status: int = 200
    reply: bytes = b'{"deployed": true}'
    location: str | None = None  # answer every POST with a 302 to this URL
    delay: float = 0.0
    verbose: bool = False
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if self.verbose:
            headers, body = self.requests[-1]
            print(json.dumps({"headers": headers, "body": body.decode()}), flush=True)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.location is not None:
            raise web.HTTPFound(self.location)
        return web.Response(body=self.reply, status=self.status, content_type="application/json")


def llm_app(fake: FakeLLM) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", fake.chat)
    return app


def webhook_app(receiver: WebhookReceiver) -> web.Application:
    app = web.Application()
    app.router.add_post("/deploy", receiver.receive)
    app.router.add_post("/elsewhere", receiver.receive)
    return app


@asynccontextmanager
async def serve(app: web.Application, port: int = 0) -> AsyncIterator[str]:
    """Run ``app`` on 127.0.0.1; yields ``http://127.0.0.1:<port>``."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def _main(kind: str, port: int) -> None:
    app = llm_app(FakeLLM()) if kind == "llm" else webhook_app(WebhookReceiver(verbose=True))
    async with serve(app, port) as url:
        path = "/v1" if kind == "llm" else "/deploy"
        print(f"{kind} fake listening on {url}{path}", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.fakes")
    parser.add_argument("kind", choices=["llm", "webhook"])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_main(args.kind, args.port))
