"""The healer's own /metrics: slot states (read at scrape time) and decision counters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from healer.service import HealerService


class _SlotCollector(Collector):
    def __init__(self, service: HealerService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "foundry_healer_slots",
            "Supervised slots by kind, agent type and state",
            labels=["kind", "agent_type", "state"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for slot in self.service.supervisor.slots.values():
            key = (slot.kind, slot.agent_type or slot.name, slot.state)
            counts[key] = counts.get(key, 0) + 1
        for key, n in sorted(counts.items()):
            slots.add_metric(list(key), n)
        yield slots
        launches = CounterMetricFamily(
            "foundry_healer_launches",
            "Process launches by slot kind and agent type",
            labels=["kind", "agent_type"],
        )
        per: dict[tuple[str, str], int] = {}
        for slot in self.service.supervisor.slots.values():
            key2 = (slot.kind, slot.agent_type or slot.name)
            per[key2] = per.get(key2, 0) + slot.launches
        for key2, n in sorted(per.items()):
            launches.add_metric(list(key2), n)
        yield launches
        decisions = CounterMetricFamily(
            "foundry_healer_decisions",
            "Heal decisions by action and reason",
            labels=["action", "reason"],
        )
        for (action, reason), n in sorted(self.service.emit.counts.items()):
            decisions.add_metric([action, reason[:40]], n)
        yield decisions


class HealerMetrics:
    def __init__(self, service: HealerService) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_SlotCollector(service))
        from prometheus_client.aiohttp import make_aiohttp_handler

        self.handler = make_aiohttp_handler(self.registry)

    async def serve(self, request: web.Request) -> web.StreamResponse:
        return await self.handler(request)
