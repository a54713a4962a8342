"""The bench's own client connections to the servers of a run.

The bench connects to NATS as the ``admin`` user (it provisions the baseline's
stream and watches every subject) and to Redis as the cluster's ACL user.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.credentials import NatsAccess
from bench.infra import Infra
from foundry.natsauth import ADMIN


async def connect_admin(bus: NatsAccess, name: str = "bench-client") -> NATS:
    """A connection to ``bus``'s server as its admin user (over TLS when it serves TLS)."""
    options: dict[str, Any] = {"name": name, "pending_size": 64 * 1024 * 1024}
    if bus.tls_ca:
        options["tls"] = ssl.create_default_context(cafile=bus.tls_ca)
    return await nats.connect(bus.url(ADMIN), **options)


@dataclass
class Session:
    infra: Infra
    nc: NATS
    js: JetStreamContext
    redis: aioredis.Redis

    @classmethod
    async def open(cls, infra: Infra, bus: NatsAccess | None = None) -> Session:
        """Connect to ``bus`` (default: the plain nats-server) and to Redis."""
        nc = await connect_admin(bus or infra.bus)
        js = nc.jetstream(publish_async_max_pending=4000)
        return cls(infra, nc, js, aioredis.Redis.from_url(infra.redis_url))

    async def close(self) -> None:
        try:
            await self.nc.close()
        finally:
            await self.redis.aclose()
