"""The live-worker table: the latest heartbeat of every worker, bounded, with one forgetting rule.

The healer, the gateway and the monitor each keep one, fed by their heartbeat
subscriptions. A worker is *silent* once its last beat is older than the
silence timeout and *forgotten* (dropped from the table) once it is older than
``forget_after``; a worker that says ``stopped`` is forgotten at once. A new
process under a known worker id replaces the old one. Both forgetting and
replacing hand the old entry to ``on_retire``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from foundry.contracts import Heartbeat, WorkerState
from foundry.rejections import REJECTIONS, Rejections

MAX_WORKERS = 4096
Incarnation = tuple[str, int, float]  # worker id, pid, started_at


def forget_after_for(silence_timeout: float) -> float:
    """How long a silent worker stays listed: 20 silence timeouts, at least a minute."""
    return max(60.0, silence_timeout * 20)


@dataclass
class Seen:
    """A worker's latest heartbeat and when it arrived (monotonic)."""

    beat: Heartbeat
    received: float

    @property
    def incarnation(self) -> Incarnation:
        return (self.beat.worker_id, self.beat.pid, self.beat.started_at)


class LiveTable:
    """Heartbeats by worker id, at most ``max_workers`` of them."""

    def __init__(
        self,
        silence_timeout: float,
        *,
        max_workers: int = MAX_WORKERS,
        clock: Callable[[], float] = time.monotonic,
        on_retire: Callable[[Seen], None] | None = None,
        rejections: Rejections = REJECTIONS,
    ) -> None:
        self.silence_timeout = silence_timeout
        self.forget_after = forget_after_for(silence_timeout)
        self.max_workers = max_workers
        self.clock = clock
        self.on_retire = on_retire
        self.rejections = rejections
        self._rows: dict[str, Seen] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._rows

    def observe(self, beat: Heartbeat) -> Seen | None:
        """Take a beat in; None when the table is full and the worker is new (counted)."""
        previous = self._rows.get(beat.worker_id)
        if previous is None and len(self._rows) >= self.max_workers:
            self.prune()
            if len(self._rows) >= self.max_workers:
                self.rejections.record(
                    "heartbeat", "table_full", f"{self.max_workers} workers listed already"
                )
                return None
        seen = Seen(beat, self.clock())
        if previous is not None and previous.incarnation != seen.incarnation:
            self._retire(previous)
        if beat.state is WorkerState.STOPPED:
            self._rows.pop(beat.worker_id, None)
            self._retire(seen)
        else:
            self._rows[beat.worker_id] = seen
        return seen

    def get(self, worker_id: str) -> Seen | None:
        return self._rows.get(worker_id)

    def age(self, seen: Seen) -> float:
        return self.clock() - seen.received

    def silent(self, seen: Seen) -> bool:
        return self.age(seen) > self.silence_timeout

    def prune(self) -> None:
        """Forget workers silent for longer than ``forget_after``."""
        now = self.clock()
        for wid, seen in list(self._rows.items()):
            if now - seen.received > self.forget_after:
                del self._rows[wid]
                self._retire(seen)

    def live(self) -> list[Seen]:
        """Every listed worker, by worker id (after forgetting the long-silent)."""
        self.prune()
        return [self._rows[w] for w in sorted(self._rows)]

    def _retire(self, seen: Seen) -> None:
        if self.on_retire is not None:
            self.on_retire(seen)
