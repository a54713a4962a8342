"""Typed application keys for the gateway's long-lived resources."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from foundry.settings import Settings
from foundry.store import TaskStore
from gateway.live import ClusterView

SETTINGS = web.AppKey("settings", Settings)
NC = web.AppKey("nats", NATS)
JS = web.AppKey("jetstream", JetStreamContext)
REDIS = web.AppKey("redis", aioredis.Redis)
STORE = web.AppKey("store", TaskStore)
VIEW = web.AppKey("view", ClusterView)
# The OpenAPI document, generated once from the route table and the settings.
OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi")
