"""Heal routes: heal now, release a quarantined worker, heal history (from AGENT_EVENTS)."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import Any

import nats.errors
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from foundry import codec
from foundry.errors import BrokerUnavailable
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import JS, NC, SETTINGS

CONTROL_TIMEOUT = 5.0
HISTORY_MAX = 1000
HISTORY_SCAN = 20_000


async def control(
    request: web.Request,
    verb: str,
    body: dict[str, Any] | None = None,
    within: float = CONTROL_TIMEOUT,
) -> Any:
    """Ask the healer over ``agents.control.<verb>``; 503 when no healer answers."""
    nc = request.app[NC]
    if not nc.is_connected:
        raise BrokerUnavailable("NATS is unreachable")
    subject = request.app[SETTINGS].names.control(verb)
    try:
        reply = await nc.request(subject, codec.dumps(body or {}), timeout=within)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        raise ApiError(
            503,
            "healer_unavailable",
            "no healer answered; start one with `python -m healer` (or `make up`)",
            service="healer",
        ) from None
    return codec.loads(reply.data)


async def ask_healer(request: web.Request, verb: str, within: float = 0.5) -> dict[str, Any] | None:
    """The healer's reply, or None when none answers quickly (for views that degrade)."""
    try:
        body = await control(request, verb, within=within)
    except Exception:
        return None
    return body if isinstance(body, dict) else None


async def heal_now(request: web.Request) -> web.Response:
    """POST /api/cluster/heal → {"healed_workers", "count", "message"}"""
    out = await control(request, "heal")
    return json_response(out)


async def release(request: web.Request) -> web.Response:
    """POST /api/cluster/workers/{worker_id}/release"""
    worker_id = request.match_info["worker_id"]
    out = await control(request, "release", {"worker_id": worker_id})
    if out.get("code") == "not_found":
        raise ApiError(404, "not_found", out["error"], worker_id=worker_id)
    if not out.get("released"):
        raise ApiError(
            409,
            "not_quarantined",
            f"{worker_id} is {out.get('state')}, not quarantined: nothing to release",
            worker_id=worker_id,
            state=out.get("state"),
        )
    return json_response(out)


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f"{name} must be a whole number", name) from None
    if not low <= value <= high:
        raise bad_request(f"{name} must be between {low} and {high}", name)
    return value


async def history(request: web.Request) -> web.Response:
    """GET /api/cluster/heal/history?limit=&offset= — heal events, newest first."""
    limit = _int(request, "limit", 50, 1, HISTORY_MAX)
    offset = _int(request, "offset", 0, 0, HISTORY_SCAN)
    names, js = request.app[SETTINGS].names, request.app[JS]
    if not request.app[NC].is_connected:
        raise BrokerUnavailable("NATS is unreachable")
    keep: deque[dict[str, Any]] = deque(maxlen=limit + offset)
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.NONE,
        filter_subject=names.events("heal", ">"),
        inactive_threshold=30.0,
    )
    psub = await js.pull_subscribe(
        names.events("heal", ">"), stream=names.events_stream, config=config
    )
    total, started = 0, time.monotonic()
    try:
        while total < HISTORY_SCAN and time.monotonic() - started < 5:
            try:
                msgs = await psub.fetch(500, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            if not msgs:
                break
            for msg in msgs:
                with contextlib.suppress(ValueError):
                    keep.append(codec.loads(msg.data))
            total += len(msgs)
            if msgs[-1].metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            info = await psub.consumer_info()
            await psub.unsubscribe()
            await js.delete_consumer(names.events_stream, info.name)
    newest_first = list(reversed(keep))[offset : offset + limit]
    return json_response(
        {"events": newest_first, "count": len(newest_first), "offset": offset, "total": total}
    )
