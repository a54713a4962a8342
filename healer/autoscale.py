"""The autoscaling policy: how many workers each agent type should have, from figures alone.

Every check the healer gathers, per type whose FOUNDRY_FLEET entry is a range
``min..max``, a :class:`TypeView` (the consumer's pending tasks, the type's
slots, which of them are live, starting or idle) and one :class:`HostView`
(the monitor's latest host sample); :meth:`Autoscaler.decide` turns them into
:class:`Decision` records. Nothing here touches a process or the bus, and time
comes from an injectable clock, so the policy is tested with figures.

- **Up**: pending tasks per live worker above ``backlog`` for ``samples``
  consecutive checks adds workers: enough for the backlog (one per ``backlog``
  pending tasks), at most doubling per step, never past ``max`` nor past the
  host's headroom (CPU and memory under the thresholds remediation uses,
  counting what a worker of the type uses now). While new workers are still
  starting the type is not judged, so one backlog is not answered twice.
- **Blocked**: a backlog that headroom (or a missing host sample) keeps from
  being served is one decision, announced once until the backlog or the
  refusal ends.
- **Down**: no pending task for ``cooldown`` seconds drains the idle surplus
  (idle, nothing in flight), highest index first, down to ``min``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from foundry.settings import FleetRange, Settings

UNLIMITED = 1 << 16  # room for more workers than any range allows


class Step(StrEnum):
    """What a scale decision does: the ``step`` of a ``heal.scale`` event."""

    UP = "up"
    DOWN = "down"
    BLOCKED = "blocked"


# the event's reason: few values, as the healer counts decisions by (action, reason)
REASONS = {Step.UP: "backlog", Step.DOWN: "idle", Step.BLOCKED: "no_headroom"}


@dataclass(frozen=True)
class ScaleConfig:
    backlog: float  # pending tasks per live worker that count as a backlog
    samples: int  # consecutive checks over ``backlog`` before adding workers
    cooldown: float  # seconds without a pending task before draining the surplus
    cpu_threshold: float  # percent; the host must stay under it (FOUNDRY_CPU_THRESHOLD)
    memory_threshold: float  # percent (FOUNDRY_MEMORY_THRESHOLD)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScaleConfig:
        return cls(
            backlog=settings.scale_backlog,
            samples=settings.scale_samples,
            cooldown=settings.scale_cooldown,
            cpu_threshold=settings.cpu_threshold,
            memory_threshold=settings.memory_threshold,
        )


@dataclass(frozen=True)
class HostView:
    """The host as the monitor last measured it; ``cpu_percent`` None: no fresh sample."""

    cpu_percent: float | None
    memory_percent: float | None
    cpus: int = 1
    memory_total_bytes: int = 0

    @property
    def known(self) -> bool:
        return self.cpu_percent is not None and self.memory_percent is not None

    def room(self, cfg: ScaleConfig, worker_cpu: float, worker_rss: int) -> int:
        """How many more workers using ``worker_cpu`` % of a core and ``worker_rss`` bytes fit
        under both thresholds (0 when unknown or already over one)."""
        if self.cpu_percent is None or self.memory_percent is None:
            return 0
        cpu_left = cfg.cpu_threshold - self.cpu_percent
        memory_left = cfg.memory_threshold - self.memory_percent
        if cpu_left <= 0 or memory_left <= 0:
            return 0
        fits = [UNLIMITED]
        if worker_cpu > 0:
            fits.append(_fit(cpu_left, worker_cpu / max(1, self.cpus)))
        if worker_rss > 0 and self.memory_total_bytes > 0:
            fits.append(_fit(memory_left, 100.0 * worker_rss / self.memory_total_bytes))
        return min(fits)

    def after(self, added: int, worker_cpu: float, worker_rss: int) -> HostView:
        """The host as it will be with ``added`` more such workers (for the next type)."""
        if not self.known or added <= 0:
            return self
        cpu = (self.cpu_percent or 0.0) + added * worker_cpu / max(1, self.cpus)
        memory = self.memory_percent or 0.0
        if self.memory_total_bytes > 0:
            memory += 100.0 * added * worker_rss / self.memory_total_bytes
        return replace(self, cpu_percent=cpu, memory_percent=memory)


def _fit(left: float, each: float) -> int:
    # strictly under the threshold: a worker that would land exactly on it does not fit
    return max(0, math.ceil(left / each) - 1)


@dataclass(frozen=True)
class TypeView:
    """One type's figures at one check."""

    agent_type: str
    pending: int  # the consumer's num_pending: tasks not yet delivered to any worker
    target: int  # worker slots the type has now (those being retired not counted)
    live: int  # of them, running and heartbeating
    starting: int = 0  # launched, no heartbeat yet
    idle: tuple[str, ...] = ()  # running, idle, nothing in flight: may be drained
    worker_cpu_percent: float = 0.0  # what one live worker of the type uses (% of a core)
    worker_rss_bytes: int = 0  # and its resident memory

    @property
    def per_worker(self) -> float:
        return self.pending / self.live if self.live else float(self.pending)


@dataclass(frozen=True)
class Decision:
    """One scale decision with the figures that explain it."""

    agent_type: str
    step: Step
    from_count: int
    to_count: int
    pending: int
    per_worker: float
    why: str
    headroom: dict[str, Any] = field(default_factory=dict)
    retire: tuple[str, ...] = ()  # slots to drain (step down)

    @property
    def reason(self) -> str:
        return REASONS[self.step]

    def details(self) -> dict[str, Any]:
        """The ``heal.scale`` event's figures."""
        return {
            "step": self.step.value,
            "from_count": self.from_count,
            "to_count": self.to_count,
            "backlog": self.pending,
            "backlog_per_worker": round(self.per_worker, 3),
            "detail": self.why,
            **self.headroom,
            "retired": list(self.retire),
        }


@dataclass
class _TypeState:
    above: int = 0  # consecutive checks over the backlog threshold
    calm_since: float | None = None  # when the queue was last seen becoming empty
    blocked: bool = False  # a refusal was announced for the current backlog


class Autoscaler:
    """Per-type memory of recent checks; :meth:`decide` is the whole policy."""

    def __init__(
        self,
        ranges: Mapping[str, FleetRange],
        cfg: ScaleConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ranges = {t: r for t, r in ranges.items() if r.scales}
        self.cfg = cfg
        self.clock = clock
        self._state = {t: _TypeState() for t in self.ranges}

    def decide(self, views: Iterable[TypeView], host: HostView) -> list[Decision]:
        """One check of every scalable type; the host's room is shared among them in order."""
        out = []
        for view in views:
            decision = self._decide(view, host)
            if decision is None:
                continue
            out.append(decision)
            if decision.step is Step.UP:
                added = decision.to_count - decision.from_count
                host = host.after(added, view.worker_cpu_percent, view.worker_rss_bytes)
        return out

    def _decide(self, view: TypeView, host: HostView) -> Decision | None:
        bounds = self.ranges.get(view.agent_type)
        if bounds is None:
            return None
        st = self._state[view.agent_type]
        now = self.clock()
        if view.pending > 0:
            st.calm_since = None
        elif st.calm_since is None:
            st.calm_since = now
        if view.starting:
            st.above = 0  # judge the backlog again once the new workers take their share
            return None
        cfg = self.cfg
        hot = view.pending > 0 and (view.live == 0 or view.per_worker > cfg.backlog)
        st.above = st.above + 1 if hot else 0
        if not hot:
            st.blocked = False
        if hot and st.above >= cfg.samples and view.target < bounds.maximum:
            return self._up(view, host, bounds, st)
        calm_for = 0.0 if st.calm_since is None else now - st.calm_since
        surplus = view.target - bounds.minimum
        if st.calm_since is not None and calm_for >= cfg.cooldown and surplus > 0 and view.idle:
            retire = view.idle[:surplus]
            return Decision(
                view.agent_type,
                Step.DOWN,
                view.target,
                view.target - len(retire),
                view.pending,
                view.per_worker,
                f"no pending task for {calm_for:.1f}s (FOUNDRY_SCALE_COOLDOWN="
                f"{cfg.cooldown:g}): draining {len(retire)} idle worker(s)",
                retire=retire,
            )
        return None

    def _up(
        self, view: TypeView, host: HostView, bounds: FleetRange, st: _TypeState
    ) -> Decision | None:
        cfg = self.cfg
        wanted = min(
            bounds.maximum,
            max(view.target + 1, math.ceil(view.pending / cfg.backlog)),
            max(view.target * 2, view.target + 1),
        )
        room = host.room(cfg, view.worker_cpu_percent, view.worker_rss_bytes)
        figures = self._headroom(host, room)
        load = (
            f"{view.pending} pending for {view.live} live worker(s): {view.per_worker:.1f} each "
            f"> {cfg.backlog:g} (FOUNDRY_SCALE_BACKLOG) for {st.above} checks"
        )
        to = min(wanted, view.target + room)
        if to <= view.target:
            first = not st.blocked
            st.blocked = True
            st.above = 0
            if not first:
                return None  # announced once for this backlog
            return Decision(
                view.agent_type,
                Step.BLOCKED,
                view.target,
                view.target,
                view.pending,
                view.per_worker,
                f"{load}; {self._refusal(host)}",
                figures,
            )
        st.above = 0
        st.blocked = False
        limited = f"; host headroom allows {room} more" if to < wanted else ""
        return Decision(
            view.agent_type,
            Step.UP,
            view.target,
            to,
            view.pending,
            view.per_worker,
            f"{load}{limited}",
            figures,
        )

    def _refusal(self, host: HostView) -> str:
        cfg = self.cfg
        if not host.known:
            return "no fresh host sample from the monitor: headroom unknown"
        return (
            f"no headroom: cpu {host.cpu_percent:.1f}% (FOUNDRY_CPU_THRESHOLD="
            f"{cfg.cpu_threshold:g}), memory {host.memory_percent:.1f}% "
            f"(FOUNDRY_MEMORY_THRESHOLD={cfg.memory_threshold:g}) with one more worker"
        )

    def _headroom(self, host: HostView, room: int) -> dict[str, Any]:
        return {
            "cpu_percent": None if host.cpu_percent is None else round(host.cpu_percent, 1),
            "memory_percent": (
                None if host.memory_percent is None else round(host.memory_percent, 1)
            ),
            "cpu_threshold": self.cfg.cpu_threshold,
            "memory_threshold": self.cfg.memory_threshold,
            "room_workers": min(room, UNLIMITED),
        }

    def state(self) -> dict[str, Any]:
        """What the cluster status shows: each scalable type's range and counters."""
        now = self.clock()
        out: dict[str, Any] = {}
        for agent_type, bounds in self.ranges.items():
            st = self._state[agent_type]
            out[agent_type] = {
                "min": bounds.minimum,
                "max": bounds.maximum,
                "backlog_checks": st.above,
                "calm_seconds": None if st.calm_since is None else round(now - st.calm_since, 3),
                "blocked": st.blocked,
            }
        return out
