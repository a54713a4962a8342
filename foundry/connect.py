"""NATS and Redis connections with robust reconnect settings and bounded start-up retries.

A service started before its broker or cache comes up waits for it (logged,
bounded by ``FOUNDRY_CONNECT_TIMEOUT``) instead of crashing at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from foundry.errors import BrokerUnavailable, CacheUnavailable
from foundry.settings import Settings, redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _log_error(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def _log_disconnect() -> None:
    log.warning("nats: disconnected, reconnecting")


async def _log_reconnect() -> None:
    log.info("nats: reconnected")


async def _with_retries(
    attempt: Callable[[], Awaitable[T]],
    budget: float,
    what: str,
    error: Callable[[Exception], Exception],
) -> T:
    """Call ``attempt`` until it succeeds, backing off up to 2 s, for at most ``budget`` s."""
    deadline = time.monotonic() + budget
    delay = 0.1
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if time.monotonic() + delay > deadline:
                raise error(exc) from exc
            log.warning("%s not reachable yet (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def connect_nats(settings: Settings, name: str, **extra: Any) -> NATS:
    """Connect to NATS, retrying for up to ``connect_timeout`` seconds."""
    options: dict[str, Any] = {
        "servers": [settings.nats_url],
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": 2,
        "max_outstanding_pings": 2,
        "connect_timeout": 2,
        "allow_reconnect": True,
        "error_cb": _log_error,
        "disconnected_cb": _log_disconnect,
        "reconnected_cb": _log_reconnect,
        "pending_size": 8 * 1024 * 1024,
    }
    options.update(extra)
    conn: NATS = await _with_retries(
        # With max_reconnect_attempts=-1, nats.connect() itself retries a refused first
        # connection forever: bound the attempt, or FOUNDRY_CONNECT_TIMEOUT never fires.
        lambda: asyncio.wait_for(nats.connect(**options), max(0.5, settings.connect_timeout)),
        settings.connect_timeout,
        "NATS",
        lambda exc: BrokerUnavailable(
            f"NATS at {redact_url(settings.nats_url)} did not answer within "
            f"{settings.connect_timeout:g}s ({exc!r}); is nats-server running? "
            "Set FOUNDRY_NATS_URL to where it listens."
        ),
    )
    return conn


def redis_client(settings: Settings) -> aioredis.Redis:
    """A Redis client that fails fast when the server is down (no long hangs)."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=1.0,
        socket_timeout=3.0,
        health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


async def connect_redis(settings: Settings) -> aioredis.Redis:
    """Create a client and wait (bounded) until the server answers PING."""
    client = redis_client(settings)

    async def ping() -> aioredis.Redis:
        await client.ping()
        return client

    try:
        return await _with_retries(
            ping,
            settings.connect_timeout,
            "Redis",
            lambda exc: CacheUnavailable(
                f"Redis at {redact_url(settings.redis_url)} did not answer within "
                f"{settings.connect_timeout:g}s ({exc!r}); is redis-server running? "
                "Set FOUNDRY_REDIS_URL to where it listens."
            ),
        )
    except CacheUnavailable:
        await client.aclose()
        raise
