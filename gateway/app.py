"""The gateway application: typed app keys, connections in ``cleanup_ctx``, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from foundry.connect import connect_nats, connect_redis
from foundry.provision import provision
from foundry.settings import Settings
from foundry.store import TaskStore
from gateway import cluster, heal, tasks
from gateway.errors import json_errors
from gateway.keys import JS, NC, REDIS, SETTINGS, STORE, VIEW
from gateway.live import ClusterView
from gateway.metrics import setup_metrics
from gateway.openapi import openapi_view

log = logging.getLogger(__name__)


async def _connections(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    view = ClusterView(settings.names, settings.silence_timeout)

    async def on_reconnect() -> None:
        log.info("nats: reconnected; waking long-polls to re-read Redis")
        view.wake_all()

    nc = await connect_nats(settings, "gateway", reconnected_cb=on_reconnect)
    redis = await connect_redis(settings)
    js = nc.jetstream()
    await provision(js, settings)
    await view.start(nc)
    app[NC], app[JS], app[REDIS], app[VIEW] = nc, js, redis, view
    app[STORE] = TaskStore(redis, settings.names, settings.result_ttl)
    log.info("gateway ready: %s", settings.describe())
    yield
    await view.stop()
    await nc.drain() if nc.is_connected else await nc.close()
    await redis.aclose()


def create_app(settings: Settings) -> web.Application:
    # Bodies over the limit are refused by aiohttp itself (413) before being read whole;
    # the margin leaves room for the JSON envelope around a description at the limit.
    app = web.Application(middlewares=[json_errors], client_max_size=settings.max_task_bytes + 4096)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_connections)
    app.router.add_get("/health", cluster.health)
    app.router.add_post("/api/cluster/task/submit", tasks.submit)
    app.router.add_get("/api/cluster/task/{task_id}", tasks.get_task)
    app.router.add_get("/api/cluster/status", cluster.status)
    app.router.add_get("/api/cluster/agents/live", cluster.agents_live)
    app.router.add_post("/api/cluster/heal", heal.heal_now)
    app.router.add_get("/api/cluster/heal/history", heal.history)
    app.router.add_post("/api/cluster/workers/{worker_id}/release", heal.release)
    app.router.add_get("/api/openapi.json", openapi_view)
    setup_metrics(app)
    return app
