"""The healer's own /metrics: slot states and fleet targets (read at scrape time), decisions,
rejected messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry.rejections import REJECTIONS
from healer.events import Emitter
from healer.supervisor import Supervisor

# agent type → (minimum, target, maximum) worker count
FleetTargets = Callable[[], Mapping[str, tuple[int, int, int]]]


class SlotCollector(Collector):
    def __init__(
        self, supervisor: Supervisor, emitter: Emitter, targets: FleetTargets | None = None
    ) -> None:
        self.supervisor = supervisor
        self.emitter = emitter
        self.targets = targets

    def collect(self) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "foundry_healer_slots",
            "Supervised slots by kind, agent type and state",
            labels=["kind", "agent_type", "state"],
        )
        counts: dict[tuple[str, str, str], int] = {}
        for slot in self.supervisor.slots.values():
            key = (slot.kind.value, slot.agent_type or slot.name, slot.state.value)
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
        for slot in self.supervisor.slots.values():
            key2 = (slot.kind.value, slot.agent_type or slot.name)
            per[key2] = per.get(key2, 0) + slot.launches
        for key2, n in sorted(per.items()):
            launches.add_metric(list(key2), n)
        yield launches
        decisions = CounterMetricFamily(
            "foundry_healer_decisions",
            "Heal decisions by action and reason",
            labels=["action", "reason"],
        )
        for (action, reason), n in sorted(self.emitter.counts.items()):
            decisions.add_metric([action.value, reason[:40]], n)
        yield decisions
        if self.targets is not None:
            yield from _fleet(self.targets())


def _fleet(targets: Mapping[str, tuple[int, int, int]]) -> Iterator[Metric]:
    families = [
        GaugeMetricFamily(f"foundry_healer_fleet_{what}", doc, labels=["agent_type"])
        for what, doc in (
            ("min", "Fewest workers of the type this healer runs (FOUNDRY_FLEET)."),
            ("target", "Workers of the type this healer runs now (the autoscaler's target)."),
            ("max", "Most workers of the type this healer may run (FOUNDRY_FLEET)."),
        )
    ]
    for agent_type, figures in sorted(targets.items()):
        for family, value in zip(families, figures, strict=True):
            family.add_metric([agent_type], value)
    yield from families


def healer_registry(
    supervisor: Supervisor, emitter: Emitter, targets: FleetTargets | None = None
) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SlotCollector(supervisor, emitter, targets))
    registry.register(REJECTIONS)
    return registry
