"""Which healer does the cluster-wide duties: the one holding the ``healer`` leader lease.

Every healer stands by on the lease key ``healer`` of the lease bucket
(:class:`foundry.lease.Lease`, a JetStream KV key with a TTL and revision-checked
renewal). The holder acts on max-deliveries advisories, redelivers the tasks of
other hosts' silent workers and dead-letters unserved types; the others leave
those alone. A leader killed is replaced within the lease's TTL plus a poll
(``FOUNDRY_LEASE_TTL``); one stopped cleanly releases the key at once.

Each election is a ``heal.leader`` event naming the previous holder when this
healer saw one, and whatever waited for a leader (advisories buffered during the
takeover) is handed over through :attr:`Leadership.on_elected`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext

from foundry.contracts import HealAction
from foundry.lease import Lease, election_details
from foundry.provision import bucket_configs, ensure_streams
from foundry.runtime import spawn
from foundry.settings import Settings

log = logging.getLogger(__name__)
LEASE_KEY = "healer"


class Leadership:
    """The healer's place in the election: :attr:`held` says whether it leads now."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        emit: Callable[..., Awaitable[None]] | None = None,
    ) -> None:
        self.js = js
        self.emit = emit
        # called, in order, each time this healer takes the lease
        self.on_elected: list[Callable[[], Awaitable[Any]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.settings = settings
        self.holder = f"{settings.host_id}-{os.getpid()}"
        self.lease = Lease(
            js, settings.names.lease_bucket, LEASE_KEY, settings.lease_ttl, self.holder
        )
        self.elected_at: float | None = None

    @property
    def held(self) -> bool:
        return self.lease.held

    async def provision(self) -> None:
        """Create the lease bucket (only it: the workflow bucket is the orchestrator's)."""
        stream = self.settings.names.kv_stream(self.settings.names.lease_bucket)
        configs = [c for c in bucket_configs(self.settings) if c.name == stream]
        await ensure_streams(self.js, self.settings, configs)

    async def run(self, stop: asyncio.Event) -> None:
        await self.lease.run(stop, self._elected, self._lost)

    async def _elected(self) -> None:
        self.elected_at = time.time()
        log.info("healer %s leads the cluster-wide duties", self.holder)
        if self.emit is not None:
            await self.emit(HealAction.LEADER, **election_details(self.lease))
        if self.on_elected:  # apart from the lease loop, so renewals never wait on them
            spawn(self._hand_over(), self._tasks)

    async def _hand_over(self) -> None:
        for hook in self.on_elected:
            try:
                await hook()
            except Exception:
                log.exception("on election: %r failed", hook)

    async def _lost(self) -> None:
        self.elected_at = None
        log.info("healer %s no longer leads", self.holder)
