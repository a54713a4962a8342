"""Built-in handler ``llm`` (default for ``architect``, ``coder``, ``critic``).

An OpenAI-compatible chat-completions client (OpenAI, Ollama, vLLM and
llama.cpp servers speak it): POST ``<FOUNDRY_LLM_URL>/chat/completions`` with
the agent type's role prompt and the task, stream the answer (SSE) calling
``ctx.progress()`` per chunk, retry 429, 5xx and lost connections with
exponential backoff, and return ``content``, ``model``, ``usage`` and
``finish_reason``.

Task input (all optional): ``system`` (replaces the role prompt), ``messages``
(chat messages sent instead of the description), ``model``, ``temperature``,
``max_tokens``, ``stream``; any other input is appended to the user message as
JSON. The API key is sent as a bearer token and never logged or returned.

What a task may choose is bounded by the operator: ``model`` only from
``FOUNDRY_LLM_MODELS`` (``FOUNDRY_LLM_MODEL`` is always allowed),
``max_tokens`` at most ``FOUNDRY_LLM_MAX_TOKENS`` (always sent), and system
messages of its own (``system``, or a ``messages`` entry with the ``system``
role) only with ``FOUNDRY_LLM_ALLOW_SYSTEM=1``. Redirects are never followed:
a 3xx answer fails the task naming its ``Location``.

One HTTP session per worker, opened by the ``setup`` hook and closed by
``close``; called without them (no worker), each call opens its own.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from foundry import codec, tracing
from foundry.settings import Settings
from workers.builtin.http import read_capped, redirect_error, snippet, where
from workers.builtin.llmlimits import LlmLimits, retry_after
from workers.builtin.prompts import role_prompt
from workers.handlers import BaseHandler, TaskContext, TaskFailed

log = logging.getLogger(__name__)
CONTROL_KEYS = frozenset({"system", "messages", "model", "temperature", "max_tokens", "stream"})
MAX_BODY = 16 * 1024 * 1024
BACKOFF_MAX = 30.0
RETRY_AFTER_MAX = 60.0


class _Retry(Exception):
    """A transient failure: 429, 5xx, a lost connection or a stalled read."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int = 0) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


def _user_content(description: str, task_input: Any) -> str:
    extra = task_input
    if isinstance(task_input, dict):
        extra = {k: v for k, v in task_input.items() if k not in CONTROL_KEYS}
    if extra in (None, {}, "", []):
        return description
    text = extra if isinstance(extra, str) else codec.dumps(extra).decode()
    return f"{description}\n\nInput:\n{text}" if description else text


def _model(spec: dict[str, Any], settings: Settings) -> str:
    asked = spec.get("model")
    if asked is None or asked == "":
        model = settings.llm.model or (settings.llm.models[0] if settings.llm.models else "")
        if not model:
            raise TaskFailed(
                "llm: no model configured; set FOUNDRY_LLM_MODEL (e.g. llama3.2 for Ollama, "
                "gpt-4o-mini for OpenAI)"
            )
        return model
    allowed = [m for m in (settings.llm.model, *settings.llm.models) if m]
    if not isinstance(asked, str) or asked not in allowed:
        raise TaskFailed(
            f"llm: input.model {asked!r} is not allowed; allowed: {', '.join(allowed) or 'none'} "
            "(FOUNDRY_LLM_MODEL, FOUNDRY_LLM_MODELS)"
        )
    return asked


def _max_tokens(spec: dict[str, Any], settings: Settings) -> int:
    cap = settings.llm.max_tokens
    asked = spec.get("max_tokens")
    if asked is None:
        return cap
    if isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise TaskFailed("llm: input.max_tokens must be a positive whole number")
    return min(asked, cap)


def _refuse_system(what: str) -> TaskFailed:
    return TaskFailed(
        f"llm: {what} is refused: tasks may not set system messages unless the operator "
        "allows it (FOUNDRY_LLM_ALLOW_SYSTEM=1)"
    )


def build_request(ctx: TaskContext) -> dict[str, Any]:
    """The chat-completions request body for this task."""
    settings = ctx.settings
    spec = ctx.input if isinstance(ctx.input, dict) else {}
    model = _model(spec, settings)
    system = spec.get("system")
    if system is not None and not settings.llm.allow_system:
        raise _refuse_system("input.system")
    if not isinstance(system, str):
        system = role_prompt(ctx.agent_type, settings.llm.prompts_dir)
    messages: list[Any] = [{"role": "system", "content": system}]
    extra = spec.get("messages")
    if extra is not None:
        if not isinstance(extra, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in extra
        ):
            raise TaskFailed('llm: input.messages must be a list of {"role", "content"} objects')
        if not settings.llm.allow_system and any(m["role"] == "system" for m in extra):
            raise _refuse_system("a system message in input.messages")
        messages.extend(extra)
    else:
        messages.append({"role": "user", "content": _user_content(ctx.description, ctx.input)})
    stream = settings.llm.stream if spec.get("stream") is None else bool(spec["stream"])
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if spec.get("temperature") is not None:
        body["temperature"] = spec["temperature"]
    body["max_tokens"] = _max_tokens(spec, settings)
    return body


def _backoff(base: float, attempt: int, retry_after: float | None) -> float:
    delay = min(base * 2 ** (attempt - 1), BACKOFF_MAX) * random.uniform(0.75, 1.0)
    return float(max(delay, retry_after or 0.0))


def _malformed(server: str, what: str, data: bytes = b"") -> TaskFailed:
    excerpt = f": {snippet(data)}" if data else ""
    return TaskFailed(f"llm: malformed response from {server}: {what}{excerpt}")


def _parse_completion(data: bytes, server: str) -> dict[str, Any]:
    try:
        body = codec.loads(data)
    except codec.JSONDecodeError:
        raise _malformed(server, "not JSON", data) from None
    if not isinstance(body, dict):
        raise _malformed(server, "not a JSON object", data)
    if body.get("error"):
        raise TaskFailed(f"llm: {server} reported an error: {snippet(codec.dumps(body['error']))}")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _malformed(server, "no 'choices'", data)
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise _malformed(server, "no 'choices[0].message.content'", data)
    usage = body.get("usage")
    return {
        "content": content,
        "model": body.get("model"),
        "usage": usage if isinstance(usage, dict) else None,
        "finish_reason": choices[0].get("finish_reason"),
        "streamed": False,
    }


class _Stream:
    """Accumulates a chat-completions SSE stream."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.parts: list[str] = []
        self.model: str | None = None
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.chunks = 0
        self.done = False

    def feed(self, payload: str) -> bool:
        """Take one event's data; True when it carried content."""
        if payload == "[DONE]":
            self.done = True
            return False
        try:
            chunk = codec.loads(payload)
        except codec.JSONDecodeError:
            raise _malformed(self.server, "a stream event is not JSON", payload.encode()) from None
        if not isinstance(chunk, dict):
            raise _malformed(self.server, "a stream event is not an object", payload.encode())
        if chunk.get("error"):
            detail = snippet(codec.dumps(chunk["error"]))
            raise TaskFailed(f"llm: {self.server} reported an error mid-stream: {detail}")
        self.model = chunk.get("model") or self.model
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            raise _malformed(self.server, "a stream event has no 'choices'", payload.encode())
        got = False
        for choice in choices[:1]:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                self.parts.append(content)
                self.chunks += 1
                got = True
            if isinstance(choice, dict) and choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return got

    def result(self) -> dict[str, Any]:
        if not self.done and self.finish_reason is None:
            raise _Retry(f"the stream from {self.server} ended before the answer was complete")
        return {
            "content": "".join(self.parts),
            "model": self.model,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "streamed": True,
        }


async def _read_stream(
    resp: aiohttp.ClientResponse, ctx: TaskContext, server: str
) -> dict[str, Any]:
    stream = _Stream(server)
    data: list[str] = []
    while not stream.done:
        try:
            raw = await resp.content.readline()
        except (ValueError, LineTooLong):
            raise _malformed(server, "a stream line is too long") from None
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif not line and data:  # a blank line (or the end) closes an event
            if stream.feed("\n".join(data)):
                await ctx.emit(stream.parts[-1])
                await ctx.progress(f"streaming: {stream.chunks} chunks received")
            data = []
        if not raw:
            break
    return stream.result()


Answered = Callable[[int, Mapping[str, str]], Awaitable[None]]


async def _complete(
    session: aiohttp.ClientSession,
    ctx: TaskContext,
    body: dict[str, Any],
    headers: dict[str, str],
    answered: Answered,
) -> dict[str, Any]:
    settings = ctx.settings
    server = where(settings.llm.url)
    endpoint = settings.llm.url.rstrip("/") + "/chat/completions"
    try:
        async with session.post(
            endpoint,
            data=codec.dumps(body),
            headers=headers,
            timeout=_timeout(settings),
            allow_redirects=False,
        ) as resp:
            await answered(resp.status, resp.headers)
            if 300 <= resp.status < 400:
                raise TaskFailed(f"llm: {redirect_error(resp, server)}")
            if resp.status == 429 or resp.status >= 500:
                data, _ = await read_capped(resp, 4096)
                detail = snippet(data, scrub=settings.llm.api_key)
                raise _Retry(
                    f"HTTP {resp.status} from {server}: {detail}",
                    retry_after(resp.headers, RETRY_AFTER_MAX),
                    resp.status,
                )
            if not 200 <= resp.status < 300:
                data, _ = await read_capped(resp, 4096)
                detail = snippet(data, scrub=settings.llm.api_key)
                raise TaskFailed(f"llm: {server} answered HTTP {resp.status}: {detail}")
            if body["stream"] and resp.content_type == "text/event-stream":
                return await _read_stream(resp, ctx, server)
            data, truncated = await read_capped(resp, MAX_BODY)
            if truncated:
                raise _malformed(server, f"the body is over {MAX_BODY} bytes")
            return _parse_completion(data, server)
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
        raise _Retry(f"{type(exc).__name__} talking to {server}") from None


def _timeout(settings: Settings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None, sock_connect=settings.llm.timeout, sock_read=settings.llm.timeout
    )


class LLMHandler(BaseHandler):
    """Ask the configured chat-completions server; see the module docstring."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None
        self.limits: LlmLimits | None = None

    async def setup(self, settings: Settings) -> None:
        self.session = aiohttp.ClientSession(timeout=_timeout(settings))
        self.limits = LlmLimits.open(settings)

    async def close(self) -> None:
        if self.limits is not None:
            await self.limits.close()
            self.limits = None
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        settings = ctx.settings
        if not settings.llm.url:
            raise TaskFailed(
                "llm: FOUNDRY_LLM_URL is not set; set it to an OpenAI-compatible base URL such "
                "as http://localhost:11434/v1 (Ollama) or https://api.openai.com/v1, with "
                "FOUNDRY_LLM_MODEL and, when the server needs one, FOUNDRY_LLM_API_KEY"
            )
        body = build_request(ctx)
        limits = self.limits or LlmLimits(settings, None)  # no worker: counted, not limited
        if self.session is not None:
            return await _ask(self.session, ctx, body, limits)
        async with aiohttp.ClientSession(timeout=_timeout(settings)) as session:
            return await _ask(session, ctx, body, limits)


async def _ask(
    session: aiohttp.ClientSession, ctx: TaskContext, body: dict[str, Any], limits: LlmLimits
) -> dict[str, Any]:
    settings = ctx.settings
    headers = {"Content-Type": "application/json"}
    if settings.llm.api_key:
        headers["Authorization"] = f"Bearer {settings.llm.api_key}"
    attempts = settings.llm.retries + 1
    for attempt in range(1, attempts + 1):
        reservation = await limits.before(ctx, body)
        answered = functools.partial(limits.answer, reservation)
        try:
            out = await _traced(session, ctx, body, headers, attempt, answered)
            await limits.after(reservation, out.get("usage"))
            return out
        except _Retry as exc:
            await limits.release(reservation)
            await limits.refund(reservation)
            if attempt == attempts:
                raise TaskFailed(
                    f"llm: {exc}; gave up after {attempts} attempt(s) "
                    f"(FOUNDRY_LLM_RETRIES={settings.llm.retries})"
                ) from None
            delay = _backoff(settings.llm.backoff, attempt, exc.retry_after)
            log.warning("llm: %s; retry %d/%d in %.2fs", exc, attempt, settings.llm.retries, delay)
            await ctx.progress(f"{exc}; retry {attempt} of {settings.llm.retries}")
            await asyncio.sleep(delay)
        finally:
            await limits.release(reservation)  # lost or cancelled before an answer
    raise AssertionError("unreachable")  # pragma: no cover


llm_handler = LLMHandler()


async def _traced(
    session: aiohttp.ClientSession,
    ctx: TaskContext,
    body: dict[str, Any],
    headers: dict[str, str],
    attempt: int,
    answered: Answered,
) -> dict[str, Any]:
    """One call to the server, as an ``llm call`` span (model, tokens) when tracing is on."""
    attributes: dict[str, str | int] = {"llm.model": str(body["model"]), "llm.attempt": attempt}
    with tracing.current().span("llm call", attributes=attributes, kind="client") as span:
        out = await _complete(session, ctx, body, headers, answered)
        usage = out.get("usage") or {}
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            span.set(f"llm.{key}", value if isinstance(value, int) else None)
        model = out.get("model")
        span.set("llm.response_model", model if isinstance(model, str) else None)
        return out
