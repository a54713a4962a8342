"""Built-in handler ``webhook`` (default for ``deployer``): POST the task to a URL.

The body is the task as JSON (``task_id``, ``agent_type``, ``description``,
``input``, ``attempt``, ``worker_id``, ``submitted_by`` — the gateway token
that submitted the task, from the payload's ``submitted_by``, else null —
``sent_at``) sent to
``FOUNDRY_DEPLOY_WEBHOOK_URL`` within ``FOUNDRY_WEBHOOK_TIMEOUT`` seconds.
With ``FOUNDRY_WEBHOOK_SECRET`` set, ``X-Foundry-Signature-256`` carries
``sha256=<hex HMAC-SHA256 of the raw body>``. A 2xx answer → the result
``{"status", "body", "truncated"}``; anything else fails the task with the same
fields, and so does a redirect (never followed; the error names its
``Location``). No automatic retry: a deploy that timed out may have happened,
so receivers should de-duplicate on ``X-Foundry-Task-Id``. One HTTP session per
worker (``setup``/``close`` hooks); called without them, one per call.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import aiohttp

from foundry import codec
from foundry.settings import Settings
from workers.builtin.http import read_capped, redirect_error, where
from workers.handlers import BaseHandler, TaskContext, TaskFailed

SIGNATURE_HEADER = "X-Foundry-Signature-256"
MAX_BODY = 64 * 1024


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex digest>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookHandler(BaseHandler):
    """POST the task to the deploy webhook and report the answer."""

    def __init__(self) -> None:
        self.session: aiohttp.ClientSession | None = None

    async def setup(self, settings: Settings) -> None:
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        if self.session is not None:
            return await _deliver(self.session, ctx)
        async with aiohttp.ClientSession() as session:
            return await _deliver(session, ctx)


def _body(ctx: TaskContext) -> bytes:
    return codec.dumps(
        {
            "task_id": ctx.task_id,
            "agent_type": ctx.agent_type,
            "description": ctx.description,
            "input": ctx.input,
            "attempt": ctx.attempt,
            "worker_id": ctx.worker_id,
            "submitted_by": ctx.submitted_by,
            "sent_at": time.time(),
        }
    )


async def _deliver(session: aiohttp.ClientSession, ctx: TaskContext) -> dict[str, Any]:
    settings = ctx.settings
    url = settings.webhook.url
    if not url:
        raise TaskFailed(
            "webhook: FOUNDRY_DEPLOY_WEBHOOK_URL is not set; set it to the URL that should "
            "receive deploy requests (and FOUNDRY_WEBHOOK_SECRET to sign them)"
        )
    body = _body(ctx)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "agent-foundry-webhook",
        "X-Foundry-Task-Id": ctx.task_id,
        "X-Foundry-Attempt": str(ctx.attempt),
    }
    if settings.webhook.secret:
        headers[SIGNATURE_HEADER] = sign(settings.webhook.secret, body)
    server = where(url)
    await ctx.progress(f"POST to {server}")
    timeout = aiohttp.ClientTimeout(total=settings.webhook.timeout)
    redirect = None
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=timeout, allow_redirects=False
        ) as resp:
            data, truncated = await read_capped(resp, MAX_BODY)
            status = resp.status
            if 300 <= status < 400:
                redirect = redirect_error(resp, server)
    except TimeoutError:
        raise TaskFailed(
            f"webhook: no answer from {server} within {settings.webhook.timeout:g}s "
            "(FOUNDRY_WEBHOOK_TIMEOUT)"
        ) from None
    except aiohttp.ClientError as exc:
        raise TaskFailed(f"webhook: cannot reach {server}: {type(exc).__name__}") from None
    result = {"status": status, "body": data.decode("utf-8", "replace"), "truncated": truncated}
    if redirect is not None:
        raise TaskFailed(f"webhook: {redirect}", result)
    if not 200 <= status < 300:
        raise TaskFailed(f"webhook: {server} answered HTTP {status}", result)
    return result


webhook_handler = WebhookHandler()
