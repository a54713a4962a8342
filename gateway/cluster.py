"""Cluster routes: health, status and live workers."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError

from foundry.apitokens import READ
from foundry.names import LANES
from gateway.auth import caller
from gateway.heal import ask_healer, gather_healers
from gateway.jsonio import json_response
from gateway.keys import JS, NC, REDIS, SETTINGS, VIEW

PROBE_TIMEOUT = 1.0


async def _redis_ok(request: web.Request) -> bool:
    try:
        return bool(await asyncio.wait_for(request.app[REDIS].ping(), PROBE_TIMEOUT))
    except (RedisError, TimeoutError, OSError):
        return False


async def _streams_ready(request: web.Request) -> bool:
    try:
        name = request.app[SETTINGS].names.tasks_stream
        await asyncio.wait_for(request.app[JS].stream_info(name), PROBE_TIMEOUT)
        return True
    except Exception:
        return False


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 when NATS and Redis answer, else 503.

    Anyone may ask; only a caller allowed ``read`` is told what is unreachable and more.
    """
    nats_ok = request.app[NC].is_connected
    token = caller(request)
    if token is None or not token.allows(READ):
        up = nats_ok and await _redis_ok(request)
        return json_response({"status": "healthy" if up else "unhealthy"}, 200 if up else 503)
    redis_ok, healer_ok, ready = await asyncio.gather(
        _redis_ok(request),
        ask_healer(request, "ping"),
        _streams_ready(request) if nats_ok else asyncio.sleep(0, False),
    )
    problems = [name for name, ok in (("nats", nats_ok), ("redis", redis_ok)) if not ok]
    body: dict[str, Any] = {
        "status": "healthy" if not problems else "unhealthy",
        "cluster_initialized": bool(ready),
        "infrastructure_agent": "running" if healer_ok is not None else "not running",
        "nats": "connected" if nats_ok else "unreachable",
        "redis": "connected" if redis_ok else "unreachable",
    }
    if problems:
        body["message"] = f"unreachable: {', '.join(problems)}"
    return json_response(body, status=200 if not problems else 503)


async def _queues(request: web.Request) -> dict[str, dict[str, Any]]:
    """Per type: its lanes' consumers summed, and what waits in each lane."""
    settings, js = request.app[SETTINGS], request.app[JS]
    out: dict[str, dict[str, Any]] = {}
    if not request.app[NC].is_connected:
        return out
    pairs = [(t, lane) for t in settings.fleet for lane in LANES]
    infos = await asyncio.gather(
        *(
            asyncio.wait_for(
                js.consumer_info(settings.names.tasks_stream, settings.names.consumer(t, lane)),
                PROBE_TIMEOUT,
            )
            for t, lane in pairs
        ),
        return_exceptions=True,
    )
    for (agent_type, lane), info in zip(pairs, infos, strict=True):
        if isinstance(info, BaseException):
            continue
        row = out.setdefault(
            agent_type,
            {"pending": 0, "ack_pending": 0, "redelivered": 0, "pending_by_priority": {}},
        )
        row["pending"] += info.num_pending or 0
        row["ack_pending"] += info.num_ack_pending or 0
        row["redelivered"] += info.num_redelivered or 0
        row["pending_by_priority"][lane] = info.num_pending or 0
    return out


async def _workers(
    request: web.Request,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Heartbeat rows merged with every host's healer slots (quarantined, backing off,
    starting), and the healers' status replies (one per host that answered)."""
    rows = request.app[VIEW].live_workers()
    expect = {str(r["host"]) for r in rows if r.get("host")}
    healers = await gather_healers(request, "status", expect=expect)
    slots: dict[str, tuple[str, dict[str, Any]]] = {}
    for healer in healers:
        host = str(healer.get("host_id") or "")
        for slot in healer.get("slots", []):
            if slot.get("kind") == "worker":
                slots[slot["slot"]] = (host, slot)
    seen = set()
    for row in rows:
        found = slots.get(row["worker_id"])
        if found is not None:
            slot = found[1]
            seen.add(row["worker_id"])
            row["slot_state"] = slot["state"]
            row["restarts"] = slot["restarts"]
            if slot["state"] == "quarantined":
                row["status"] = "quarantined"
    for name, (host, slot) in slots.items():
        if name in seen:
            continue
        state = slot["state"]
        rows.append(
            {
                "worker_id": name,
                "agent_type": slot["agent_type"],
                "status": "quarantined" if state == "quarantined" else "unhealthy",
                "state": state,
                "slot_state": state,
                "pid": slot["pid"],
                "host": host or None,
                "tasks_processed": 0,
                "errors": 0,
                "in_flight": 0,
                "uptime_seconds": 0.0,
                "last_heartbeat_age_seconds": None,
                "restarts": slot["restarts"],
                "quarantine_reason": slot["quarantine_reason"],
                "last_error": slot["last_error"],
            }
        )
    rows.sort(key=lambda r: (r.get("host") or "", r["worker_id"]))
    return rows, healers


COUNTS = ("healthy", "unhealthy", "quarantined")


def _totals(workers: list[dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(COUNTS, 0)
    for w in workers:
        counts[w["status"]] += 1
    return {
        "total_workers": len(workers),
        "healthy_workers": counts["healthy"],
        "unhealthy_workers": counts["unhealthy"] + counts["quarantined"],
        "quarantined_workers": counts["quarantined"],
    }


def _per_host(
    workers: list[dict[str, Any]], healers: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per host: its workers' totals, whether its healer answered and whether it leads."""
    answered = {str(h.get("host_id") or ""): h for h in healers}
    hosts = sorted({str(w.get("host") or "") for w in workers} | set(answered) - {""})
    out: dict[str, dict[str, Any]] = {}
    for host in hosts:
        healer = answered.get(host)
        out[host] = {
            **_totals([w for w in workers if (w.get("host") or "") == host]),
            "healer": "running" if healer is not None else "not running",
            "leader": bool(healer and healer.get("leader")),
            "host": _host_summary((healer or {}).get("host")),
        }
    return out


async def status(request: web.Request) -> web.Response:
    """GET /api/cluster/status: cluster totals by health, per-host totals, the fleet, queues."""
    settings = request.app[SETTINGS]
    workers, healers = await _workers(request)
    by_type: dict[str, dict[str, int]] = {
        t: {"desired": n, **dict.fromkeys(COUNTS, 0)} for t, n in settings.fleet.items()
    }
    for w in workers:
        row = by_type.setdefault(w["agent_type"], {"desired": 0, **dict.fromkeys(COUNTS, 0)})
        row[w["status"]] += 1
    # This host's healer first (its host sample and remediation are the ones shown flat).
    own = next((h for h in healers if h.get("host_id") == settings.host_id), None)
    healer = own or (healers[0] if healers else None)
    return json_response(
        {
            **_totals(workers),
            "agent_types": by_type,
            "hosts": _per_host(workers, healers),
            "leader": next((h.get("host_id") for h in healers if h.get("leader")), None),
            "queues": await _queues(request),
            "healer": "running" if healer else "not running",
            "host": _host_summary((healer or {}).get("host")),
            "remediation": (healer or {}).get("remediation"),
            "nats": "connected" if request.app[NC].is_connected else "unreachable",
            "redis": "connected" if await _redis_ok(request) else "unreachable",
        }
    )


def _host_summary(sample: dict[str, Any] | None) -> dict[str, Any] | None:
    """CPU, memory and the fullest watched disk, for the status view."""
    if not sample:
        return None
    disks = sample.get("disks") or []
    return {
        "host": sample.get("host"),
        "at": sample.get("at"),
        "cpu_percent": sample.get("cpu_percent"),
        "memory_percent": sample.get("memory_percent"),
        "disk_percent": max((d.get("percent", 0.0) for d in disks), default=None),
        "disks": disks,
    }


async def agents_live(request: web.Request) -> web.Response:
    """GET /api/cluster/agents/live: one row per worker (heartbeats + every healer's slots),
    ordered by host, and each host's worker ids."""
    workers, _ = await _workers(request)
    hosts: dict[str, list[str]] = {}
    for w in workers:
        hosts.setdefault(w.get("host") or "", []).append(w["worker_id"])
    return json_response({"agents": workers, "count": len(workers), "hosts": hosts})
