"""Heartbeats in, cluster metrics out (the exporter pattern).

Workers do not serve ``/metrics``: each heartbeat carries the worker's own
counters (tasks completed and failed, duration and queue-wait histograms) and
this collector adds them up per agent type at scrape time. Prometheus scrapes
the monitor, not every worker.

A worker's counters start again at zero when its process is replaced, so the
last figures of every finished process (stopped, relaunched under the same
worker id, or forgotten by the live-worker table) are kept and added in: the cluster
totals never go down. What a worker counted after its last heartbeat is lost
with it (at most one heartbeat interval's worth).

:meth:`ClusterExporter.cluster_metrics` are the cluster's figures (every worker
heard, whatever its host): only the leading monitor exports them.
:meth:`ClusterExporter.host_metrics` are this host's: the desired counts of its
healer and one series per worker of its own host.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from foundry.contracts import Heartbeat, WorkerState, values
from foundry.histogram import TASK_SECONDS_BOUNDS, cumulative
from foundry.livetable import Incarnation, LiveTable, Seen
from foundry.settings import Settings
from monitor.labels import AgentTypes, BoundedLabels

SILENT = "silent"
# what a worker says of itself (but 'stopped', which leaves the table), and 'silent'
STATES = (*(v for v in values(WorkerState) if v != WorkerState.STOPPED), SILENT)
_NBUCKETS = len(TASK_SECONDS_BOUNDS) + 1
_LE = [f"{b:g}" for b in TASK_SECONDS_BOUNDS] + ["+Inf"]
_KEEP_FINISHED = 1024  # finished processes remembered one by one (older ones are folded)
MAX_DESIRED = 256  # FOUNDRY_FLEET's largest count
MAX_LIMIT_LABELS = 64  # limit names, and models, that become label values
MAX_MODEL_LABELS = 32


@dataclass
class Totals:
    """Counters of one process, or the sum of several."""

    completed: int = 0
    failed: int = 0
    task_sum: float = 0.0
    task_buckets: list[int] = field(default_factory=lambda: [0] * _NBUCKETS)
    wait_sum: float = 0.0
    wait_buckets: list[int] = field(default_factory=lambda: [0] * _NBUCKETS)
    # Rate limits: by limit name, and the llm handler's tokens and 429s by model.
    limit_waits: dict[str, float] = field(default_factory=dict)
    limit_wait_seconds: dict[str, float] = field(default_factory=dict)
    prompt_tokens: dict[str, float] = field(default_factory=dict)
    completion_tokens: dict[str, float] = field(default_factory=dict)
    throttled: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, beat: Heartbeat) -> Totals:
        out = cls(completed=max(0, beat.processed), failed=max(0, beat.failed))
        # A histogram is taken whole or not at all, so _sum and _count stay consistent.
        if _valid(beat.task_seconds_buckets):
            out.task_sum, out.task_buckets = beat.task_seconds_sum, list(beat.task_seconds_buckets)
        if _valid(beat.wait_seconds_buckets):
            out.wait_sum, out.wait_buckets = beat.wait_seconds_sum, list(beat.wait_seconds_buckets)
        out.limit_waits = dict(beat.limit_waits)
        out.limit_wait_seconds = dict(beat.limit_wait_seconds)
        out.prompt_tokens = dict(beat.llm_prompt_tokens)
        out.completion_tokens = dict(beat.llm_completion_tokens)
        out.throttled = dict(beat.llm_throttled)
        return out

    def add(self, other: Totals) -> None:
        self.completed += other.completed
        self.failed += other.failed
        self.task_sum += other.task_sum
        self.wait_sum += other.wait_sum
        for i in range(_NBUCKETS):
            self.task_buckets[i] += other.task_buckets[i]
            self.wait_buckets[i] += other.wait_buckets[i]
        for mine, theirs in (
            (self.limit_waits, other.limit_waits),
            (self.limit_wait_seconds, other.limit_wait_seconds),
            (self.prompt_tokens, other.prompt_tokens),
            (self.completion_tokens, other.completion_tokens),
            (self.throttled, other.throttled),
        ):
            for name, value in theirs.items():
                mine[name] = mine.get(name, 0) + value


def _valid(buckets: list[int]) -> bool:
    return len(buckets) == _NBUCKETS  # the contract allows none, or one count per bucket


class ClusterExporter(Collector):
    """Holds the latest heartbeat of every worker; yields cluster metrics when scraped."""

    def __init__(
        self,
        fleet: Mapping[str, int],
        silence_timeout: float,
        types: AgentTypes | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        limits: Iterable[str] = (),
        models: Iterable[str] = (),
        host: str | None = None,
    ) -> None:
        self.fleet = dict(fleet)
        self.host = host  # per-worker series for this host's workers only (None: all)
        self.types = types or AgentTypes(fleet)
        self.clock, self.wall = clock, wall
        self.workers = LiveTable(silence_timeout, clock=clock, on_retire=self._retire)
        self._finished: OrderedDict[Incarnation, tuple[str, Totals]] = OrderedDict()
        self._folded: dict[str, Totals] = {}
        self.limit_names = BoundedLabels(MAX_LIMIT_LABELS)
        self.models = BoundedLabels(MAX_MODEL_LABELS)
        # configured limits and models are shown from the start, at 0
        self.zero_limits = [n for n in limits if self.limit_names.admit(n) is not None]
        self.zero_models = [m for m in models if m and self.models.admit(m) is not None]

    # ---- input -----------------------------------------------------------------------
    def observe(self, beat: Heartbeat) -> None:
        """Take one (validated) heartbeat into account."""
        if self.types.admit(beat.agent_type) is None:
            return
        seen = self.workers.observe(beat)
        if seen is not None and beat.state is not WorkerState.STOPPED:
            # A process forgotten for silence that speaks again is live again, not finished.
            self._finished.pop(seen.incarnation, None)

    def set_desired(self, agent_type: str, count: int) -> None:
        """This host's healer changed a type's worker count (a ``heal.scale`` event)."""
        if self.types.admit(agent_type) is not None and 0 <= count <= MAX_DESIRED:
            self.fleet[agent_type] = count

    def _retire(self, seen: Seen) -> None:
        self._finished[seen.incarnation] = (seen.beat.agent_type, Totals.of(seen.beat))
        self._finished.move_to_end(seen.incarnation)
        while len(self._finished) > _KEEP_FINISHED:
            _, (agent_type, totals) = self._finished.popitem(last=False)
            self._folded.setdefault(agent_type, Totals()).add(totals)

    # ---- views -----------------------------------------------------------------------
    def live(self) -> list[Seen]:
        """Workers in the live-worker table, by worker id."""
        return self.workers.live()

    def state_of(self, seen: Seen) -> str:
        return SILENT if self.workers.silent(seen) else seen.beat.state.value

    def totals(self) -> dict[str, Totals]:
        """Cluster totals per agent type: finished processes plus live ones."""
        out = {t: Totals() for t in self.types.known}
        for agent_type, folded in self._folded.items():
            out[agent_type].add(folded)
        for agent_type, totals in self._finished.values():
            out[agent_type].add(totals)
        for seen in self.workers.live():
            out[seen.beat.agent_type].add(Totals.of(seen.beat))
        return out

    # ---- collection ------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        yield from self.cluster_metrics()
        yield from self.host_metrics()

    def cluster_metrics(self) -> Iterable[Metric]:
        yield from self._task_metrics()
        yield from self._limit_metrics()
        yield from self._worker_counts(self.live())

    def host_metrics(self) -> Iterable[Metric]:
        yield self._desired()
        own = [s for s in self.live() if self.host is None or s.beat.host == self.host]
        yield from self._per_worker(own)

    def _task_metrics(self) -> Iterable[Metric]:
        completed = CounterMetricFamily(
            "foundry_tasks_completed", "Tasks finished successfully (from heartbeats).",
            labels=["agent_type"],
        )  # fmt: skip
        failed = CounterMetricFamily(
            "foundry_tasks_failed", "Tasks that failed (handler error, timeout, malformed).",
            labels=["agent_type"],
        )  # fmt: skip
        duration = HistogramMetricFamily(
            "foundry_task_duration_seconds", "Handler run time of finished tasks.",
            labels=["agent_type"],
        )  # fmt: skip
        wait = HistogramMetricFamily(
            "foundry_task_queue_wait_seconds", "Time from submission to a worker starting it.",
            labels=["agent_type"],
        )  # fmt: skip
        for agent_type, t in self.totals().items():
            completed.add_metric([agent_type], t.completed)
            failed.add_metric([agent_type], t.failed)
            duration.add_metric([agent_type], _buckets(t.task_buckets), t.task_sum)
            wait.add_metric([agent_type], _buckets(t.wait_buckets), t.wait_sum)
        yield from (completed, failed, duration, wait)

    def _limit_metrics(self) -> Iterable[Metric]:
        cluster = Totals()
        for totals in self.totals().values():
            cluster.add(totals)
        for name in self.zero_limits:
            cluster.limit_waits.setdefault(name, 0)
        for model in self.zero_models:
            for table in (cluster.prompt_tokens, cluster.completion_tokens, cluster.throttled):
                table.setdefault(model, 0)
        waits = CounterMetricFamily(
            "foundry_limit_waits", "Tasks or requests that waited for a rate limit or token "
            "budget (FOUNDRY_RATE_LIMITS, FOUNDRY_TOKEN_BUDGETS, model pauses).", labels=["limit"],
        )  # fmt: skip
        waited = CounterMetricFamily(
            "foundry_limit_wait_seconds", "Seconds spent waiting for rate limits.",
            labels=["limit"],
        )  # fmt: skip
        for name in sorted(cluster.limit_waits):
            if self.limit_names.admit(name) is not None:
                waits.add_metric([name], cluster.limit_waits[name])
                waited.add_metric([name], cluster.limit_wait_seconds.get(name, 0.0))
        tokens = CounterMetricFamily(
            "foundry_llm_tokens", "Tokens the llm handler's server reported, by model and kind.",
            labels=["model", "kind"],
        )  # fmt: skip
        throttled = CounterMetricFamily(
            "foundry_llm_provider_throttled", "Provider answers HTTP 429 (rate limited), by model.",
            labels=["model"],
        )  # fmt: skip
        for kind, table in (("prompt", cluster.prompt_tokens),
                            ("completion", cluster.completion_tokens)):  # fmt: skip
            for model in sorted(table):
                if self.models.admit(model) is not None:
                    tokens.add_metric([model, kind], table[model])
        for model in sorted(cluster.throttled):
            if self.models.admit(model) is not None:
                throttled.add_metric([model], cluster.throttled[model])
        yield from (waits, waited, tokens, throttled)

    def _worker_counts(self, live: list[Seen]) -> Iterable[Metric]:
        counts = {(t, s): 0 for t in self.types.known for s in STATES}
        for seen in live:
            counts[(seen.beat.agent_type, self.state_of(seen))] += 1
        workers = GaugeMetricFamily(
            "foundry_workers", "Workers by agent type and state ('silent': no recent heartbeat).",
            labels=["agent_type", "state"],
        )  # fmt: skip
        for (agent_type, state), n in counts.items():
            workers.add_metric([agent_type, state], n)
        yield workers

    def _desired(self) -> Metric:
        desired = GaugeMetricFamily(
            "foundry_workers_desired", "Worker processes this host's healer runs now, by agent "
            "type (FOUNDRY_FLEET's minimum until the autoscaler changes it).",
            labels=["agent_type"],
        )  # fmt: skip
        for agent_type in self.types.known:
            desired.add_metric([agent_type], self.fleet.get(agent_type, 0))
        return desired

    def _per_worker(self, live: list[Seen]) -> Iterable[Metric]:
        labels = ["agent_type", "worker"]
        up = GaugeMetricFamily(
            "foundry_worker_up", "1 when the worker's last heartbeat is within the silence "
            "timeout, else 0.", labels=labels,
        )  # fmt: skip
        age = GaugeMetricFamily(
            "foundry_worker_heartbeat_age_seconds", "Seconds since the worker's last heartbeat.",
            labels=labels,
        )  # fmt: skip
        pid = GaugeMetricFamily("foundry_worker_pid", "Process id of the worker.", labels=labels)
        uptime = GaugeMetricFamily(
            "foundry_worker_uptime_seconds", "Seconds since the worker process started.",
            labels=labels,
        )  # fmt: skip
        in_flight = GaugeMetricFamily(
            "foundry_worker_in_flight", "Tasks the worker holds right now.", labels=labels
        )
        lag = GaugeMetricFamily(
            "foundry_worker_loop_lag_seconds", "How late the worker's event loop woke up.",
            labels=labels,
        )  # fmt: skip
        done = CounterMetricFamily(
            "foundry_worker_tasks_completed", "Tasks this worker process completed.", labels=labels
        )
        failed = CounterMetricFamily(
            "foundry_worker_tasks_failed", "Tasks this worker process failed.", labels=labels
        )
        now_mono, now = self.clock(), self.wall()
        for seen in live:
            b = seen.beat
            key = [b.agent_type, b.worker_id]
            heard = now_mono - seen.received
            up.add_metric(key, 0 if self.state_of(seen) == SILENT else 1)
            age.add_metric(key, heard)
            pid.add_metric(key, b.pid)
            uptime.add_metric(key, max(0.0, now - b.started_at) if b.started_at else 0.0)
            in_flight.add_metric(key, len(b.in_flight))
            lag.add_metric(key, b.loop_lag_seconds)
            done.add_metric(key, max(0, b.processed))
            failed.add_metric(key, max(0, b.failed))
        yield from (up, age, pid, uptime, in_flight, lag, done, failed)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    return list(zip(_LE, (float(c) for c in cumulative(counts)), strict=True))


def limit_labels(settings: Settings) -> tuple[list[str], list[str]]:
    """The limit names and models the settings configure (shown at 0 before any traffic)."""
    limits = [n if n.startswith("llm:") else f"type:{n}" for n in settings.rate_limits]
    limits += [f"tokens:{m}" for m in settings.token_budgets]
    models = [settings.llm.model, *settings.llm.models, *settings.token_budgets]
    models += [n[4:] for n in settings.rate_limits if n.startswith("llm:")]
    return limits, list(dict.fromkeys(m for m in models if m))
