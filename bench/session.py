"""The bench's own client connections to the servers of a run."""

from __future__ import annotations

from dataclasses import dataclass

import nats
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from bench.infra import Infra


@dataclass
class Session:
    infra: Infra
    nc: NATS
    js: JetStreamContext
    redis: aioredis.Redis

    @classmethod
    async def open(cls, infra: Infra) -> Session:
        nc = await nats.connect(infra.nats_url, name="bench-client", pending_size=64 * 1024 * 1024)
        js = nc.jetstream(publish_async_max_pending=4000)
        return cls(infra, nc, js, aioredis.Redis.from_url(infra.redis_url))

    async def close(self) -> None:
        try:
            await self.nc.close()
        finally:
            await self.redis.aclose()
