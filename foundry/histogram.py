"""Fixed histogram buckets that workers fill and the monitor exports.

A worker counts each task's duration and queue wait into these buckets and
sends the counts in its heartbeat; the monitor adds them up per agent type and
serves them as Prometheus histograms. Both sides must agree on the bounds, so
they live here. Counts are per bucket (not cumulative); the last one is +Inf.
"""

from __future__ import annotations

import bisect

# Seconds, from a quick echo to a long agent run (FOUNDRY_TASK_TIMEOUT defaults to 600).
TASK_SECONDS_BOUNDS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
)  # fmt: skip


class BucketCounts:
    """Observations counted into ``bounds`` (upper bounds, inclusive) plus +Inf."""

    def __init__(self, bounds: tuple[float, ...] = TASK_SECONDS_BOUNDS) -> None:
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1

    def counts(self) -> list[int]:
        """A copy of the per-bucket counts, ``len(bounds) + 1`` long."""
        return list(self._counts)


def cumulative(counts: list[int]) -> list[int]:
    """Per-bucket counts turned into Prometheus' cumulative ``le`` counts."""
    out, total = [], 0
    for count in counts:
        total += count
        out.append(total)
    return out
