"""nats-server's own figures, read from its HTTP monitoring endpoint (``-m <port>``).

That endpoint answers JSON (``/varz``, ``/jsz``), not Prometheus text, so
Prometheus cannot scrape it directly; the monitor reads it every
``FOUNDRY_HOST_INTERVAL`` and re-exports a few numbers. Off unless
``FOUNDRY_NATS_MONITOR_URL`` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import aiohttp
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 2.0

# (metric, help, json key, counter?) read from /varz and /jsz.
VARZ = (
    ("foundry_nats_server_connections", "Client connections open now.", "connections", False),
    ("foundry_nats_server_subscriptions", "Subscriptions on the server.", "subscriptions", False),
    ("foundry_nats_server_in_msgs", "Messages received by the server.", "in_msgs", True),
    ("foundry_nats_server_out_msgs", "Messages sent by the server.", "out_msgs", True),
    ("foundry_nats_server_in_bytes", "Bytes received by the server.", "in_bytes", True),
    ("foundry_nats_server_out_bytes", "Bytes sent by the server.", "out_bytes", True),
    ("foundry_nats_server_slow_consumers", "Clients cut off for reading too slowly.",
     "slow_consumers", True),
    ("foundry_nats_server_memory_bytes", "Resident memory of nats-server.", "mem", False),
)  # fmt: skip
JSZ = (
    ("foundry_jetstream_memory_bytes", "JetStream memory storage in use.", "memory", False),
    ("foundry_jetstream_storage_bytes", "JetStream file storage in use.", "storage", False),
    ("foundry_jetstream_api_errors", "JetStream API requests that failed.", "api.errors", True),
)  # fmt: skip


class NatsServerStats(Collector):
    """The last ``/varz`` and ``/jsz`` answers of one nats-server."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.varz: dict[str, Any] = {}
        self.jsz: dict[str, Any] = {}
        self.up = False

    async def refresh(self, http: aiohttp.ClientSession) -> None:
        try:
            self.varz, self.jsz = await asyncio.gather(
                self._get(http, "/varz"), self._get(http, "/jsz")
            )
            self.up = True
        except Exception as exc:
            log.debug("nats monitoring endpoint not read: %r", exc)
            self.up = False

    async def _get(self, http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with http.get(self.url + path, timeout=timeout) as resp:
            resp.raise_for_status()
            body = await resp.json(content_type=None)
        if not isinstance(body, dict):
            raise ValueError(f"{path} did not answer a JSON object")
        return body

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "foundry_nats_server_monitoring_up",
            "1 when nats-server's monitoring endpoint answered the last read.",
        )
        up.add_metric([], 1 if self.up else 0)
        yield up
        if not self.varz:
            return
        for source, table in ((self.varz, VARZ), (self.jsz, JSZ)):
            for name, doc, key, counter in table:
                value = _dig(source, key)
                if value is None:
                    continue
                family = CounterMetricFamily(name, doc) if counter else GaugeMetricFamily(name, doc)
                family.add_metric([], value)
                yield family


def _dig(body: dict[str, Any], dotted: str) -> float | None:
    value: Any = body
    for key in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None
