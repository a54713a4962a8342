"""The monitor service: owns the connections, the subscriptions, the sampling loop and the app.

Every ``FOUNDRY_HOST_INTERVAL`` it samples the host, probes NATS and Redis,
publishes the sample on ``names.host(<host>)`` and refreshes the JetStream
(and optional nats-server) figures. Heartbeats and events are taken in as they
arrive. ``/metrics`` serves all of it from one registry; ``/health`` says
whether the sampling loop is alive.

Cluster-wide series (JetStream figures, event counters, the heartbeat totals) are
exported by the leading monitor only (``monitor/leader.py``); this host's (host
sample, its own workers, its healer's desired counts, nats-server's figures,
rejections) by every monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.aiohttp import make_aiohttp_handler

from foundry.connect import connect_nats, redis_client
from foundry.contracts import HealAction, HealEvent, Heartbeat, HostSample, TaskEvent
from foundry.contracts.workflow import WorkflowEvent
from foundry.rejections import REJECTIONS
from foundry.runtime import spawn
from foundry.settings import Settings
from monitor.events import EventMetrics
from monitor.exporter import ClusterExporter, limit_labels
from monitor.hostmetrics import HostMetrics
from monitor.jetstream import JetStreamStats
from monitor.labels import AgentTypes
from monitor.leader import Collected, LeaderGauge, LeaderOnly, MonitorLeadership
from monitor.nats_server import NatsServerStats
from monitor.sampler import HostSampler, probe_nats, probe_redis

log = logging.getLogger(__name__)


class Monitor:
    """Cluster and host observer; :meth:`start` after connecting, :meth:`stop` before closing."""

    def __init__(self, settings: Settings, hostname: str | None = None) -> None:
        self.settings = settings
        self.names = settings.names
        self.hostname = hostname or settings.host_id
        # The healer subscribes to its own host name the same way (a dotted name spans tokens).
        self.subject = self.names.host(self.hostname)
        self.registry = CollectorRegistry()
        self.types = AgentTypes(settings.fleet)
        limits, models = limit_labels(settings)
        self.exporter = ClusterExporter(
            settings.fleet, settings.silence_timeout, types=self.types, limits=limits,
            models=models, host=self.hostname,
        )  # fmt: skip
        self.cluster_events = CollectorRegistry()  # counted by every monitor, shown by the leader
        self.events = EventMetrics(self.cluster_events, self.types)
        self.jetstream = JetStreamStats(self.names, self.types)
        self.host_metrics = HostMetrics()
        self.nats_server = (
            NatsServerStats(settings.nats_monitor_url) if settings.nats_monitor_url else None
        )
        self.leadership: MonitorLeadership | None = None
        cluster = LeaderOnly(
            self.leading, Collected(self.exporter.cluster_metrics), self.jetstream,
            self.cluster_events,
        )  # fmt: skip
        host = (
            REJECTIONS, LeaderGauge(self.hostname, self.leading),
            Collected(self.exporter.host_metrics), self.host_metrics, self.nats_server,
        )  # fmt: skip
        for collector in (cluster, *host):
            if collector is not None:
                self.registry.register(collector)
        self.sampler = HostSampler(self.hostname, settings.watched_paths)
        self.started = time.monotonic()
        self.last_sample_at: float | None = None
        self._subs: list[Subscription] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.nc: NATS
        self.redis: aioredis.Redis
        self.http: aiohttp.ClientSession

    def leading(self) -> bool:
        """Whether this monitor exports the cluster-wide series now (it holds the lease)."""
        return self.leadership is not None and self.leadership.held

    @property
    def last_sample(self) -> HostSample | None:
        return self.host_metrics.sample

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self, nc: NATS, redis: aioredis.Redis, http: aiohttp.ClientSession) -> None:
        self.nc, self.redis, self.http = nc, redis, http
        subscriptions = (
            (self.names.heartbeat("*", "*"), self._on_beat),
            (self.names.task_event("queued", "*"), self._on_task_event),
            (self.names.task_event("dead", "*"), self._on_task_event),
            (self.names.task_event("cancelled", "*"), self._on_task_event),
            (self.names.heal_event("*"), self._on_heal_event),
            (self.names.workflow_event("*"), self._on_workflow_event),
        )
        for subject, cb in subscriptions:
            self._subs.append(await nc.subscribe(subject, cb=cb))
        with contextlib.suppress(Exception):  # the server knows our interest before we serve
            await nc.flush(timeout=2)
        self.leadership = MonitorLeadership(
            nc.jetstream(), self.settings, self.hostname, self._publish_heal, self._refresh_cluster
        )
        await self.leadership.start()
        spawn(self._loop(), self._tasks)
        log.info("monitor on %s: host samples on %s every %gs", self.hostname, self.subject,
                 self.settings.host_interval)  # fmt: skip

    async def stop(self) -> None:
        if self.leadership is not None:
            await self.leadership.stop()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _loop(self) -> None:
        interval = self.settings.host_interval
        while True:
            began = time.monotonic()
            try:
                await self.sample_once()
            except Exception:
                log.exception("host sample failed; trying again next interval")
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    async def sample_once(self) -> HostSample:
        """Probe, measure, publish the host sample and refresh the JetStream figures."""
        nats_probe, redis_probe = await asyncio.gather(probe_nats(self.nc), probe_redis(self.redis))
        fleet = [s.beat for s in self.exporter.live() if s.beat.host == self.hostname]
        sample = await asyncio.to_thread(self.sampler.measure, fleet, nats_probe, redis_probe)
        self.host_metrics.sample = sample
        self.last_sample_at = time.monotonic()
        if self.nc.is_connected:
            try:
                await self.nc.publish(self.subject, sample.to_payload())
            except Exception as exc:  # disconnected: the next interval tries again
                log.debug("host sample not published: %r", exc)
        refreshes = [self.jetstream.refresh(self.nc.jetstream())] if self.leading() else []
        if self.nats_server is not None:
            refreshes.append(self.nats_server.refresh(self.http))
        await asyncio.gather(*refreshes)
        return sample

    async def _refresh_cluster(self) -> None:
        """Just elected: read the JetStream figures now rather than at the next sample."""
        await self.jetstream.refresh(self.nc.jetstream())

    async def _publish_heal(self, event: HealEvent) -> None:
        if self.nc.is_connected:
            await self.nc.publish(self.names.heal_event(event.action.value), event.to_payload())

    # ---- subscriptions ---------------------------------------------------------------
    async def _on_beat(self, msg: Msg) -> None:
        beat = REJECTIONS.parse(lambda: Heartbeat.from_payload(msg.data, msg.subject))
        if beat is not None:
            self.exporter.observe(beat)

    async def _on_task_event(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        replay = False
        if tokens[-2] == "queued" and b'"replay_of"' in msg.data:  # only replays are parsed
            event = REJECTIONS.parse(lambda: TaskEvent.from_payload(msg.data), msg.subject)
            replay = event is not None and event.replay_of is not None
        self.events.on_task_event(tokens[-2], tokens[-1], replay)

    async def _on_heal_event(self, msg: Msg) -> None:
        event = REJECTIONS.parse(lambda: HealEvent.from_payload(msg.data), msg.subject)
        if event is not None:
            self.events.on_heal_event(event)
            if event.action is HealAction.SCALE and event.host == self.hostname:
                to_count = event.number("to_count")
                if event.agent_type is not None and to_count is not None:
                    self.exporter.set_desired(event.agent_type, int(to_count))

    async def _on_workflow_event(self, msg: Msg) -> None:
        event = REJECTIONS.parse(lambda: WorkflowEvent.from_payload(msg.data), msg.subject)
        if event is not None:
            self.events.on_workflow_event(event)

    # ---- health ----------------------------------------------------------------------
    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while the sampling loop keeps up (NATS or Redis down is reported, not fatal)."""
        now = time.monotonic()
        since = now - (self.last_sample_at or self.started)
        limit = max(3 * self.settings.host_interval, self.settings.host_interval + 10)
        ok = since <= limit
        sample = self.last_sample
        return ok, {
            "status": "healthy" if ok else "unhealthy",
            "host": self.hostname,
            "last_sample_age_seconds": round(since, 3) if self.last_sample_at else None,
            "nats": "connected" if self.nc.is_connected else "unreachable",
            "redis": "unknown" if sample is None else ("ok" if sample.redis_ok else "unreachable"),
            "workers": len(self.exporter.workers),
            "leader": self.leading(),
        }


MONITOR = web.AppKey("monitor", Monitor)


async def _health(request: web.Request) -> web.Response:
    ok, body = request.app[MONITOR].health()
    return web.json_response(body, status=200 if ok else 503)


async def _host(request: web.Request) -> web.Response:
    sample = request.app[MONITOR].last_sample
    if sample is None:
        return web.json_response({"error": "no_sample_yet"}, status=503)
    return web.json_response(sample.to_json())


def create_app(settings: Settings, hostname: str | None = None) -> web.Application:
    """The monitor's app: connects in ``cleanup_ctx``; ``/health``, ``/host``, ``/metrics``."""
    # Process-wide: the *_created series would double the series count; nothing reads them.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    monitor = Monitor(settings, hostname)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        nc = await connect_nats(settings, "monitor")
        redis = redis_client(settings)  # not awaited: a Redis outage is something to report
        http = aiohttp.ClientSession()
        await monitor.start(nc, redis, http)
        yield
        await monitor.stop()
        await http.close()
        await nc.drain() if nc.is_connected else await nc.close()
        await redis.aclose()

    app = web.Application()
    app[MONITOR] = monitor
    app.cleanup_ctx.append(resources)
    app.router.add_get("/health", _health)
    app.router.add_get("/host", _host)
    app.router.add_get("/metrics", make_aiohttp_handler(monitor.registry))
    return app
