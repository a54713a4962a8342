"""Counting the messages a process drops: ``foundry_messages_rejected_total{kind,reason}``.

A message that fails its contract (or a check against what this process knows,
such as a heartbeat whose pid is not the one launched) is dropped, counted here
and logged at most once a minute per (kind, reason). Nothing raises into a loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry.contracts.fields import MessageRejected

log = logging.getLogger(__name__)
T = TypeVar("T")
LOG_EVERY = 60.0


class Rejections(Collector):
    """Per-process counts of rejected messages, also a Prometheus collector."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts: dict[tuple[str, str], int] = {}
        self._logged: dict[tuple[str, str], float] = {}

    def record(self, kind: str, reason: str, detail: str, source: str = "") -> None:
        key = (kind, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        now = self.clock()
        last = self._logged.get(key)
        if last is None or now - last >= LOG_EVERY:
            self._logged[key] = now
            where = f" from {source}" if source else ""
            log.warning(
                "dropped a %s message%s (%s): %s [%d %s/%s so far; logged once a minute]",
                kind, where, reason, detail, self.counts[key], kind, reason,
            )  # fmt: skip

    def rejected(self, exc: MessageRejected, source: str = "") -> None:
        self.record(exc.kind, exc.reason, exc.detail, source)

    def parse(self, parse: Callable[[], T], source: str = "") -> T | None:
        """``parse()``, or None after counting the rejection."""
        try:
            return parse()
        except MessageRejected as exc:
            self.rejected(exc, source)
            return None

    def total(self, kind: str | None = None) -> int:
        return sum(n for (k, _), n in self.counts.items() if kind is None or k == kind)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "foundry_messages_rejected",
            "Messages dropped because they failed validation, by message kind and reason.",
            labels=["kind", "reason"],
        )
        for (kind, reason), n in sorted(self.counts.items()):
            family.add_metric([kind, reason], n)
        yield family


# One per process: every subscriber of a service counts into it and /metrics serves it.
REJECTIONS = Rejections()
