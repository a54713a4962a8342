"""Heal routes: heal now, release a quarantined worker, heal history (from AGENT_EVENTS)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import deque
from collections.abc import Iterable
from typing import Any

import nats.errors
from aiohttp import web
from nats.aio.msg import Msg

from foundry import codec
from foundry.contracts import ControlReply, MessageRejected
from foundry.errors import BrokerUnavailable
from foundry.hostid import host_of
from gateway.audit import audited
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import JS, NC, SETTINGS, VIEW
from gateway.spec import Param
from gateway.streamscan import StreamScan

CONTROL_TIMEOUT = 5.0
HISTORY_MAX = 1000
HISTORY_SCAN = 20_000
# Healer slot names: `<agent type>-<index>@<host>` for workers (foundry.hostid), `gateway`,
# `nats-server` … for others.
WORKER_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}(@[a-z0-9][a-z0-9_-]{0,62})?$")
WORKER_ID_HINT = (
    "a slot name: 1-64 lowercase letters, digits, '_' or '-', starting with a letter, "
    "optionally followed by @<host id>"
)

LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": HISTORY_MAX, "default": 50},
    "Events to return",
)
OFFSET = Param(
    "offset",
    "query",
    {"type": "integer", "minimum": 0, "maximum": HISTORY_SCAN, "default": 0},
    "Newest events to skip",
)
WORKER_ID = Param(
    "worker_id",
    "path",
    {"type": "string", "pattern": WORKER_ID_RE.pattern},
    "The slot to release, e.g. coder-0@host-a (" + WORKER_ID_HINT + ")",
)


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
    try:
        out = ControlReply.from_payload(reply.data)
    except MessageRejected:
        raise ApiError(
            502, "healer_error", f"the healer's {verb} reply is not a JSON object"
        ) from None
    if not out.ok:
        raise healer_error(verb, out)
    return out.body


# A healer error code → the HTTP status and the API's error code.
_HEALER_CODES = {
    "bad_request": (400, "bad_request"),
    "not_found": (404, "not_found"),
    "conflict": (409, "conflict"),
}


def healer_error(verb: str, reply: ControlReply) -> ApiError:
    """A healer error reply as the matching HTTP error, with the healer's reason."""
    reason = reply.error or "unknown error"
    status, code = _HEALER_CODES.get(reply.code or "", (502, "healer_error"))
    extra = {
        k: v for k, v in reply.body.items() if k in ("worker_id", "task_id", "state", "status")
    }
    if status == 502:
        return ApiError(502, code, f"the healer failed to {verb}: {reason}", service="healer")
    if status == 400:
        reason = f"the healer refused {verb}: {reason}"
    return ApiError(status, code, reason, **extra)


async def ask_healer(request: web.Request, verb: str, within: float = 0.5) -> dict[str, Any] | None:
    """The healer's reply, or None when none answers quickly (for views that degrade)."""
    try:
        body = await control(request, verb, within=within)
    except Exception:
        return None
    return body if isinstance(body, dict) else None


async def gather_healers(
    request: web.Request,
    verb: str,
    within: float = 0.5,
    expect: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Every healer's reply to ``agents.control.<verb>`` (one per host), best effort.

    Every healer subscribes to the same control subjects, so one request reaches them
    all; the replies are gathered on one inbox until each host in ``expect`` (the hosts
    heard in heartbeats) has answered, or ``within`` seconds pass. A reply that is not a
    successful JSON object is skipped.
    """
    nc = request.app[NC]
    if not nc.is_connected:
        return []
    waiting = set(expect)
    replies: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        try:
            reply = ControlReply.from_payload(msg.data)
        except MessageRejected:
            return
        if reply.ok and isinstance(reply.body, dict):
            replies.append(reply.body)
            waiting.discard(str(reply.body.get("host_id", "")))
            if not waiting:
                done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=take)
    try:
        subject = request.app[SETTINGS].names.control(verb)
        await nc.publish(subject, codec.dumps({}), reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), within)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return replies


@audited("heal")
async def heal_now(request: web.Request) -> web.Response:
    """POST /api/cluster/heal → {"healed_workers", "count", "message", "hosts"}: every
    host's healer heals its own slots; the answer sums theirs."""
    replies = await gather_healers(request, "heal", within=2.0, expect=_hosts(request))
    if not replies:
        out = await control(request, "heal")  # one healer, or none: its answer or the 503
        return json_response(out)
    healed = [w for r in replies for w in r.get("healed_workers", [])]
    quarantined = [w for r in replies for w in r.get("quarantined", [])]
    message = f"healed {len(healed)} worker(s)" if healed else "nothing to heal"
    if quarantined:
        message += f"; quarantined (release them explicitly): {', '.join(quarantined)}"
    hosts = {str(r.get("host_id", "")): r.get("message", "") for r in replies}
    return json_response(
        {
            "healed_workers": healed,
            "count": len(healed),
            "message": message,
            "quarantined": quarantined,
            "hosts": hosts,
        }
    )


def _hosts(request: web.Request) -> set[str]:
    """Hosts whose workers beat (a healer of each is expected to answer)."""
    return {str(row["host"]) for row in request.app[VIEW].live_workers() if row.get("host")}


@audited("release", "worker_id")
async def release(request: web.Request) -> web.Response:
    """POST /api/cluster/workers/{worker_id}/release"""
    worker_id = request.match_info["worker_id"]
    if not WORKER_ID_RE.fullmatch(worker_id):
        raise bad_request(f"worker_id must be {WORKER_ID_HINT}", "worker_id")
    owner = host_of(worker_id)
    if owner is not None:  # only that host's healer answers: is it there at all?
        pings = await gather_healers(request, "ping", expect={owner})
        if pings and owner not in {p.get("host_id") for p in pings}:
            raise ApiError(
                404,
                "not_found",
                f"no healer of host {owner!r} answers (unknown host, or it is down)",
                worker_id=worker_id,
            )
    try:
        out = await control(request, "release", {"worker_id": worker_id})
    except ApiError as exc:
        if exc.status_code == 404:
            raise ApiError(404, "not_found", exc.detail, worker_id=worker_id) from None
        if exc.status_code == 409:
            state = exc.extra.get("state")
            raise ApiError(
                409, "not_quarantined", exc.detail, worker_id=worker_id, state=state
            ) from None
        raise
    return json_response(out)


async def history(request: web.Request) -> web.Response:
    """GET /api/cluster/heal/history?limit=&offset= — heal events, newest first."""
    limit, offset = LIMIT.integer(request), OFFSET.integer(request)
    names, js = request.app[SETTINGS].names, request.app[JS]
    if not request.app[NC].is_connected:
        raise BrokerUnavailable("NATS is unreachable")
    keep: deque[dict[str, Any]] = deque(maxlen=limit + offset)
    subject = names.events("heal", ">")
    scan = StreamScan(js, names.events_stream, subject, limit=HISTORY_SCAN, within=5.0, batch=500)
    async with scan:
        async for msgs in scan:
            for msg in msgs:
                with contextlib.suppress(ValueError):
                    keep.append(codec.loads(msg.data))
    total = scan.scanned
    newest_first = list(reversed(keep))[offset : offset + limit]
    return json_response(
        {"events": newest_first, "count": len(newest_first), "offset": offset, "total": total}
    )
