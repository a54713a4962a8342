"""Footprint: resident memory of each role, idle and under load, and CPU spent per task.

A thread samples the rss of the given pids every 100 ms while load runs and
keeps the peak per role. :class:`CpuMeter` reads each process's CPU time
before and after a phase, which says where the machine's two cores went
(microseconds of CPU per completed task, per role).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import psutil

MB = 1024 * 1024


def rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for role, pid in pids.items():
        try:
            out[role] = round(psutil.Process(pid).memory_info().rss / MB, 1)
        except psutil.Error:
            continue
    return out


@dataclass
class RssPeak:
    """Peak rss per role while running (a background thread, 100 ms period)."""

    pids: dict[str, int]
    interval: float = 0.1
    peak: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while True:
            for role, mb in rss_mb(self.pids).items():
                self.peak[role] = max(mb, self.peak.get(role, 0.0))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssPeak:
        self._thread = threading.Thread(target=self._run, name="rss-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _cpu(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


@dataclass
class CpuMeter:
    """CPU seconds each role used between :meth:`start` and :meth:`stop`."""

    pids: dict[str, int]
    before: dict[str, float] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)

    def start(self) -> CpuMeter:
        self.before = {r: c for r, p in self.pids.items() if (c := _cpu(p)) is not None}
        return self

    def stop(self) -> dict[str, float]:
        for role, pid in self.pids.items():
            after = _cpu(pid)
            if after is not None and role in self.before:
                self.used[role] = round(after - self.before[role], 3)
        return self.used

    def per_task_us(self, tasks: int) -> dict[str, float]:
        """Microseconds of CPU per task, per role (workers summed as ``workers``)."""
        if tasks <= 0:
            return {}
        out: dict[str, float] = {}
        for role, seconds in self.used.items():
            key = "workers" if role.startswith(("bench-", "baseline-")) else role
            out[key] = out.get(key, 0.0) + seconds
        return {k: round(v / tasks * 1e6, 1) for k, v in sorted(out.items())}
