"""The gateway application: typed app keys, connections in ``cleanup_ctx``, middlewares, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from foundry import tracing
from foundry.connect import connect_nats, connect_redis
from foundry.provision import provision
from foundry.settings import Settings
from foundry.store import TaskStore
from gateway.auth import AuthPolicy, auth_middleware
from gateway.errors import json_errors
from gateway.events import HUB, EventHub, close_hub
from gateway.guard import Origins, json_bodies, origin_guard
from gateway.keys import JS, NC, OPENAPI, REDIS, SETTINGS, STORE, VIEW
from gateway.live import ClusterView
from gateway.metrics import setup_metrics
from gateway.openapi import document
from gateway.routes import ROUTES, add_routes, scope_table

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
    app[HUB] = EventHub(js, settings.names, view.workers)
    app[STORE] = TaskStore(redis, settings.names, settings.result_ttl)
    log.info("gateway ready: %s", settings.describe())
    yield
    await close_hub(app)
    await view.stop()
    await nc.drain() if nc.is_connected else await nc.close()
    await redis.aclose()


async def _end_streams(app: web.Application) -> None:
    """Let SSE responses finish at shutdown instead of running out their lifetime."""
    await close_hub(app)
    if VIEW in app:
        app[VIEW].wake_all()


def create_app(settings: Settings) -> web.Application:
    """The gateway app; ConfigError when the API security settings are unsafe or invalid."""
    policy = AuthPolicy.from_settings(settings)
    tracing.setup(settings, "gateway")
    # Bodies over the limit are refused by aiohttp itself (413) before being read whole;
    # the margin leaves room for the JSON envelope around a description at the limit.
    # Order: errors as JSON, then Host/Origin, then the token, then JSON-only bodies.
    app = web.Application(
        middlewares=[
            json_errors,
            origin_guard(Origins(settings)),
            auth_middleware(policy, scope_table()),
            json_bodies,
        ],
        client_max_size=settings.max_task_bytes + 4096,
    )
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_connections)
    app.on_shutdown.append(_end_streams)
    add_routes(app)
    app[OPENAPI] = document(ROUTES, settings)
    setup_metrics(app)
    return app
