"""The healer's HTTP endpoints: ``/health`` (slot states, NATS) and ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from healer.supervisor import Supervisor

SUPERVISOR = web.AppKey("supervisor", Supervisor)
NATS_OK: web.AppKey[Callable[[], bool]] = web.AppKey("nats_ok")


async def _health(request: web.Request) -> web.Response:
    nats_ok = request.app[NATS_OK]()
    states: dict[str, int] = {}
    for slot in request.app[SUPERVISOR].slots.values():
        states[slot.state.value] = states.get(slot.state.value, 0) + 1
    body = {"status": "healthy" if nats_ok else "degraded", "nats": nats_ok, "slots": states}
    return web.json_response(body, status=200 if nats_ok else 503)


def create_app(
    supervisor: Supervisor, registry: CollectorRegistry, nats_ok: Callable[[], bool]
) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app[NATS_OK] = nats_ok
    app.router.add_get("/health", _health)
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    return app


async def serve(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner (to clean up) and the port bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = next((a[1] for a in runner.addresses if isinstance(a, tuple)), port)
    return runner, int(bound)
