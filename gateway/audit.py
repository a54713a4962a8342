"""Audit of operator actions: each heal, release, cancel or replay names the token that asked.

The record is logged and published as a ``heal.audit`` event on
``agents.events.heal.audit``, where the AGENT_EVENTS stream keeps it beside the
healer's own decisions, so ``/api/cluster/heal/history`` lists it too.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from foundry import codec
from gateway.auth import caller
from gateway.errors import ApiError
from gateway.keys import NC, SETTINGS
from gateway.spec import Handler

log = logging.getLogger(__name__)
# What a handler adds to its own audit record (a new task id, a count, the filters used).
AUDIT_FIELDS: web.RequestKey[dict[str, Any]] = web.RequestKey("audit_fields")


def note(request: web.Request, **fields: Any) -> None:
    """Add ``fields`` to the audit record of this request."""
    request.setdefault(AUDIT_FIELDS, {}).update(fields)


async def record(request: web.Request, action: str, status: int, **fields: Any) -> None:
    token = caller(request)
    body: dict[str, Any] = {
        "kind": "heal.audit",
        "at": time.time(),
        "host": request.app[SETTINGS].host_id,
        "action": action,
        "token": token.name if token is not None else None,
        "status": status,
        "outcome": "done" if status < 400 else "refused" if status < 500 else "failed",
        "remote": request.remote,
        **fields,
    }
    log.info("audit %s by token %r: status %s %s", action, body["token"], status, fields or "")
    nc = request.app[NC]
    if not nc.is_connected:
        return  # the log line is the record
    try:
        await nc.publish(request.app[SETTINGS].names.heal_event("audit"), codec.dumps(body))
    except Exception as exc:
        log.warning("audit event not published: %r", exc)


def audited(action: str, *match: str) -> Callable[[Handler], Handler]:
    """Decorate a handler: record ``action``, its status and the named path parameters."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            fields = {name: request.match_info.get(name) for name in match}
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                if isinstance(exc, ApiError):
                    fields["error"] = exc.detail
                raise
            finally:
                await record(request, action, status, **{**fields, **request.get(AUDIT_FIELDS, {})})

        return run

    return wrap
