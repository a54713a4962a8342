"""Cluster routes: health, status and live workers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from gateway.keys import JS, NC, REDIS, SETTINGS, VIEW

PROBE_TIMEOUT = 1.0


async def _redis_ok(request: web.Request) -> bool:
    try:
        return bool(await asyncio.wait_for(request.app[REDIS].ping(), PROBE_TIMEOUT))
    except (RedisError, TimeoutError, OSError):
        return False


async def _healer_running(request: web.Request) -> bool:
    nc = request.app[NC]
    if not nc.is_connected:
        return False
    try:
        await nc.request(request.app[SETTINGS].names.control("ping"), b"", timeout=0.5)
        return True
    except Exception:
        return False


async def _streams_ready(request: web.Request) -> bool:
    try:
        name = request.app[SETTINGS].names.tasks_stream
        await asyncio.wait_for(request.app[JS].stream_info(name), PROBE_TIMEOUT)
        return True
    except Exception:
        return False


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 when NATS and Redis answer, else 503 naming what is unreachable."""
    nats_ok = request.app[NC].is_connected
    redis_ok, healer_ok, ready = await asyncio.gather(
        _redis_ok(request), _healer_running(request),
        _streams_ready(request) if nats_ok else asyncio.sleep(0, False),
    )  # fmt: skip
    problems = [name for name, ok in (("nats", nats_ok), ("redis", redis_ok)) if not ok]
    body: dict[str, Any] = {
        "status": "healthy" if not problems else "unhealthy",
        "cluster_initialized": bool(ready),
        "infrastructure_agent": "running" if healer_ok else "not running",
        "nats": "connected" if nats_ok else "unreachable",
        "redis": "connected" if redis_ok else "unreachable",
    }
    if problems:
        body["message"] = f"unreachable: {', '.join(problems)}"
    return web.json_response(body, status=200 if not problems else 503)


async def _queues(request: web.Request) -> dict[str, dict[str, int]]:
    settings, js = request.app[SETTINGS], request.app[JS]
    out: dict[str, dict[str, int]] = {}
    if not request.app[NC].is_connected:
        return out
    for agent_type in settings.fleet:
        try:
            info = await asyncio.wait_for(
                js.consumer_info(settings.names.tasks_stream, settings.names.consumer(agent_type)),
                PROBE_TIMEOUT,
            )
        except Exception:
            continue
        out[agent_type] = {"pending": info.num_pending or 0,
                           "ack_pending": info.num_ack_pending or 0,
                           "redelivered": info.num_redelivered or 0}  # fmt: skip
    return out


async def status(request: web.Request) -> web.Response:
    """GET /api/cluster/status: totals by health, the fleet, queues."""
    settings = request.app[SETTINGS]
    workers = request.app[VIEW].live_workers()
    healthy = sum(1 for w in workers if w["status"] == "healthy")
    by_type: dict[str, dict[str, int]] = {
        t: {"desired": n, "healthy": 0, "unhealthy": 0} for t, n in settings.fleet.items()
    }
    for w in workers:
        row = by_type.setdefault(w["agent_type"], {"desired": 0, "healthy": 0, "unhealthy": 0})
        row["healthy" if w["status"] == "healthy" else "unhealthy"] += 1
    return web.json_response({
        "total_workers": len(workers),
        "healthy_workers": healthy,
        "unhealthy_workers": len(workers) - healthy,
        "agent_types": by_type,
        "queues": await _queues(request),
        "nats": "connected" if request.app[NC].is_connected else "unreachable",
        "redis": "connected" if await _redis_ok(request) else "unreachable",
    })  # fmt: skip


async def agents_live(request: web.Request) -> web.Response:
    """GET /api/cluster/agents/live: one row per worker seen in heartbeats."""
    workers = request.app[VIEW].live_workers()
    return web.json_response({"agents": workers, "count": len(workers)})
