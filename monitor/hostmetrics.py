"""The latest host sample as metrics: host resources, broker and cache probes, fleet processes.

Percentages in the sample (what the healer's policies read) become ratios
0..1 here, Prometheus' base unit; CPU of a process is in cores (1.0 = one core).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry.contracts import HostSample


class HostMetrics(Collector):
    """Yields gauges from the sample last set in :attr:`sample` (nothing before the first)."""

    def __init__(self) -> None:
        self.sample: HostSample | None = None

    def collect(self) -> Iterable[Metric]:
        s = self.sample
        if s is None:
            return
        yield _gauge("foundry_host_cpu_usage_ratio", "CPU in use on the host, 0..1.",
                     s.cpu_percent / 100)  # fmt: skip
        yield _gauge("foundry_host_load1", "One-minute load average of the host.", s.load1)
        yield _gauge("foundry_host_memory_usage_ratio", "Memory in use on the host, 0..1.",
                     s.memory_percent / 100)  # fmt: skip
        yield _gauge("foundry_host_swap_usage_ratio", "Swap in use on the host, 0..1.",
                     s.swap_percent / 100)  # fmt: skip
        yield _gauge("foundry_host_sample_timestamp_seconds", "When the last host sample was "
                     "taken (unix time).", s.at)  # fmt: skip
        yield from self._disks(s)
        yield _gauge("foundry_nats_up", "1 when the monitor's NATS round trip succeeded.",
                     1 if s.nats_ok else 0)  # fmt: skip
        yield _gauge("foundry_redis_up", "1 when the monitor's Redis PING succeeded.",
                     1 if s.redis_ok else 0)  # fmt: skip
        for name, value, what in (
            ("foundry_nats_rtt_seconds", s.nats_rtt_seconds, "NATS PING/PONG"),
            ("foundry_redis_rtt_seconds", s.redis_rtt_seconds, "Redis PING"),
        ):
            if value is not None:
                yield _gauge(name, f"Round trip of the monitor's {what}.", value)
        yield from self._processes(s)

    @staticmethod
    def _disks(s: HostSample) -> Iterable[Metric]:
        used = GaugeMetricFamily(
            "foundry_host_disk_usage_ratio", "Disk space in use, 0..1, per watched path.",
            labels=["path"],
        )  # fmt: skip
        inodes = GaugeMetricFamily(
            "foundry_host_disk_inodes_usage_ratio", "Inodes in use, 0..1, per watched path.",
            labels=["path"],
        )  # fmt: skip
        free = GaugeMetricFamily(
            "foundry_host_disk_free_bytes", "Free disk space per watched path.", labels=["path"]
        )
        for d in s.disks:
            used.add_metric([d.path], d.percent / 100)
            inodes.add_metric([d.path], d.inodes_percent / 100)
            free.add_metric([d.path], d.free_bytes)
        yield from (used, inodes, free)

    @staticmethod
    def _processes(s: HostSample) -> Iterable[Metric]:
        labels = ["agent_type", "worker"]
        rss = GaugeMetricFamily(
            "foundry_worker_rss_bytes", "Resident memory of the worker process.", labels=labels
        )
        cpu = GaugeMetricFamily(
            "foundry_worker_cpu_usage_ratio", "CPU of the worker process in cores (1 = one core).",
            labels=labels,
        )  # fmt: skip
        for p in s.processes:
            rss.add_metric([p.agent_type, p.worker_id], p.rss_bytes)
            cpu.add_metric([p.agent_type, p.worker_id], p.cpu_percent / 100)
        yield from (rss, cpu)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family
