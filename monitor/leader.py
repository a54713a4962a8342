"""Which monitor exports the cluster-wide figures: the one holding the ``monitor`` lease.

Every monitor hears every heartbeat and event, so each could export the cluster's
figures; with several hosts that would make every dashboard take ``max`` across
monitors. Instead the monitors elect one by the key ``monitor`` of the lease bucket
(:class:`foundry.lease.Lease`, ``FOUNDRY_LEASE_TTL``; holder ``<host>-<pid>``). The
leader exports the cluster series (:class:`LeaderOnly`); every monitor exports its
own host's, and ``foundry_monitor_leader{host}`` says which one leads. A leader
killed is replaced within the TTL plus a poll; the others keep counting events all
along, so the new leader's counters go on from what it saw since it started.
Each election is a ``heal.leader`` event.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

from nats.js import JetStreamContext
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry.contracts import HealAction, HealEvent
from foundry.lease import Lease, election_details
from foundry.provision import bucket_configs, ensure_streams
from foundry.runtime import spawn
from foundry.settings import Settings

log = logging.getLogger(__name__)
LEASE_KEY = "monitor"
FIRST_TRY = 3.0  # seconds a starting monitor waits to take a free lease before serving


class MonitorLeadership:
    """The monitor's place in the election; :attr:`held` says whether it leads now."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        host: str,
        publish: Callable[[HealEvent], Awaitable[None]],
        on_elected: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> None:
        self.js = js
        self.settings = settings
        self.host = host
        self.publish = publish
        self.on_elected = on_elected
        self.lease = Lease(
            js, settings.names.lease_bucket, LEASE_KEY, settings.lease_ttl, f"{host}-{os.getpid()}"
        )
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._run: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self.lease.held

    async def start(self) -> None:
        """Create the lease bucket if needed, try once to lead, then stand by or lead."""
        stream = self.settings.names.kv_stream(self.settings.names.lease_bucket)
        try:
            configs = [c for c in bucket_configs(self.settings) if c.name == stream]
            await asyncio.wait_for(ensure_streams(self.js, self.settings, configs), FIRST_TRY)
            # a lone monitor serves the cluster series from its first scrape
            await asyncio.wait_for(self.lease.acquire(), FIRST_TRY)
        except Exception as exc:
            log.warning("monitor lease not taken at start (%r); standing by", exc)
        self._run = asyncio.create_task(self.lease.run(self._stop, self._elected, self._lost))

    async def stop(self) -> None:
        """Stand down: the lease is released at once so another monitor leads."""
        self._stop.set()
        if self._run is not None:
            try:
                await asyncio.wait_for(self._run, 3.0)
            except Exception as exc:
                log.warning("monitor lease not released cleanly: %r", exc)

    async def _elected(self) -> None:
        log.info("monitor %s exports the cluster metrics", self.lease.holder)
        event = HealEvent(HealAction.LEADER, self.host, details=election_details(self.lease))
        try:
            await self.publish(event)
        except Exception as exc:
            log.warning("heal.leader event not published: %r", exc)
        if self.on_elected is not None:
            spawn(self.on_elected(), self._tasks)

    async def _lost(self) -> None:
        log.info("monitor %s no longer exports the cluster metrics", self.lease.holder)


class LeaderOnly(Collector):
    """Yields the metrics of ``collectors`` only while ``leading()``."""

    def __init__(self, leading: Callable[[], bool], *collectors: Collector) -> None:
        self.leading = leading
        self.collectors = collectors

    def collect(self) -> Iterable[Metric]:
        if not self.leading():
            return
        for collector in self.collectors:
            yield from collector.collect()


class LeaderGauge(Collector):
    """``foundry_monitor_leader{host}``: 1 on the monitor that exports the cluster series."""

    def __init__(self, host: str, leading: Callable[[], bool]) -> None:
        self.host = host
        self.leading = leading

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "foundry_monitor_leader",
            "1 when this monitor holds the monitor lease and exports the cluster-wide series.",
            labels=["host"],
        )
        gauge.add_metric([self.host], 1 if self.leading() else 0)
        yield gauge


class Collected(Collector):
    """A collector made of a function that yields metrics (one part of a bigger collector)."""

    def __init__(self, metrics: Callable[[], Iterable[Metric]]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics()
