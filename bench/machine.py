"""The machine the figures come from: versions, and how busy other processes kept it.

Other people run test suites on shared machines, so every run reports the load
average and the CPU other processes used, at start, at end and per phase: a
phase where others used a whole core is not comparable with one where they
used none. "Ours" is this process and all its descendants, sampled in a thread;
"others" is the machine's busy CPU time minus ours.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import psutil

from foundry.servers import find_nats_server, find_redis_server

PACKAGES = ("nats-py", "redis", "hiredis", "orjson", "msgspec", "uvloop", "aiohttp", "psutil")


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    """Python, packages, servers and the CPU."""
    out: dict[str, str] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
    }
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "-"
    out["nats-server"] = _first_line([find_nats_server(), "--version"]).replace("nats-server: ", "")
    redis_line = _first_line([find_redis_server(), "--version"])
    out["redis-server"] = next(
        (w[2:] for w in redis_line.split() if w.startswith("v=")), redis_line
    )
    return out


def _busy_seconds() -> float:
    t = psutil.cpu_times()
    return float(
        t.user
        + getattr(t, "nice", 0.0)
        + t.system
        + getattr(t, "irq", 0.0)
        + getattr(t, "softirq", 0.0)
        + getattr(t, "steal", 0.0)
    )


def _label(proc: psutil.Process) -> str:
    """A short name: for Python, the module or script it runs."""
    try:
        cmd = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "?"
    if str(name).startswith("python") and len(cmd) > 1:
        if "-m" in cmd[:-1]:
            return f"python -m {cmd[cmd.index('-m') + 1]}"
        return f"python {os.path.basename(cmd[1])}"
    return str(name)


def _tree_cpu_seconds() -> float:
    """CPU seconds used by this process and its descendants, reaped ones included.

    Each live process counts its own time plus its reaped children's, so a child
    that exits moves from "own" to its parent's "children" without a gap.
    """
    me = psutil.Process()
    try:
        tree = [me, *me.children(recursive=True)]
    except psutil.Error:
        tree = [me]
    total = 0.0
    for proc in tree:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return float(total)


def _steal_seconds() -> float:
    return float(getattr(psutil.cpu_times(), "steal", 0.0))


@dataclass
class Snapshot:
    at: float  # monotonic
    busy: float  # the machine's busy CPU seconds (steal included: the hypervisor's share)
    ours: float  # our process tree's CPU seconds
    steal: float  # CPU seconds the hypervisor gave to other guests


@dataclass
class LoadWatch:
    """Marks points in time; reports the cores others and we used between two marks."""

    marks: dict[str, Snapshot] = field(default_factory=dict)

    def start(self) -> None:
        self.mark("start")

    def stop(self) -> None:
        """Nothing runs in the background; kept for symmetry with :meth:`start`."""

    def mark(self, name: str) -> None:
        self.marks[name] = Snapshot(
            time.monotonic(), _busy_seconds(), _tree_cpu_seconds(), _steal_seconds()
        )

    def others_cores(self, begin: str, end: str) -> float:
        """Average cores used by other processes between two marks."""
        a, b = self.marks[begin], self.marks[end]
        wall = max(1e-6, b.at - a.at)
        return max(0.0, ((b.busy - a.busy) - (b.ours - a.ours)) / wall)

    def phase_seconds(self) -> dict[str, float]:
        """Wall time of every phase marked ``name<`` … ``name>``."""
        return {
            name[:-1]: round(self.marks[name[:-1] + ">"].at - snap.at, 3)
            for name, snap in self.marks.items()
            if name.endswith("<") and name[:-1] + ">" in self.marks
        }

    def steal_cores(self, begin: str, end: str) -> float:
        """Average cores taken by the hypervisor (part of "others")."""
        a, b = self.marks[begin], self.marks[end]
        return max(0.0, (b.steal - a.steal) / max(1e-6, b.at - a.at))

    def ours_cores(self, begin: str, end: str) -> float:
        a, b = self.marks[begin], self.marks[end]
        return max(0.0, (b.ours - a.ours) / max(1e-6, b.at - a.at))


def top_others(seconds: float = 1.0, limit: int = 4) -> dict[str, Any]:
    """Load average, and the CPU other processes use over ``seconds`` (busiest first)."""
    me = psutil.Process()
    try:
        ours = {me.pid, *(c.pid for c in me.children(recursive=True))}
    except psutil.Error:
        ours = {me.pid}
    before: dict[int, tuple[psutil.Process, float]] = {}
    for proc in psutil.process_iter():
        if proc.pid in ours:
            continue
        try:
            t = proc.cpu_times()
            before[proc.pid] = (proc, float(t.user + t.system))
        except psutil.Error:
            continue
    busy0, t0 = _busy_seconds(), time.monotonic()
    time.sleep(seconds)
    busy1, wall = _busy_seconds(), time.monotonic() - t0
    per: dict[str, float] = {}
    for proc, cpu0 in before.values():
        try:
            t = proc.cpu_times()
            delta = float(t.user + t.system) - cpu0
        except psutil.Error:
            continue
        if delta > 0:
            label = _label(proc)
            per[label] = per.get(label, 0.0) + delta / wall * 100
    busiest = sorted(per.items(), key=lambda kv: -kv[1])[:limit]
    return {
        "calibration_ms": calibrate(),
        "wakeup_us": wakeup_roundtrip_us(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "machine_busy_percent": round((busy1 - busy0) / wall * 100, 1),
        "others_percent": round(sum(per.values()), 1),
        "busiest": [{"process": k, "cpu_percent": round(v, 1)} for k, v in busiest],
        "cores": os.cpu_count(),
    }


def calibrate(repeats: int = 7) -> float:
    """Milliseconds a fixed pure-Python loop takes (best of ``repeats``).

    Other guests on the same host slow a core down without showing up as load
    here; this number does show it: compare it between runs.
    """
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


_ECHO = "import os\nwhile (b := os.read(0, 1)):\n    os.write(1, b)\n"


def wakeup_roundtrip_us(count: int = 2000) -> float:
    """Median microseconds of a one-byte ping-pong with a child process over pipes.

    Each round trip is two syscalls and two wake-ups across processes, the
    kind of work a broker round trip costs; on a virtual machine it slows down
    when the host is busy even if this guest looks idle.
    """
    with subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        out, back = child.stdin.fileno(), child.stdout.fileno()
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            os.write(out, b"x")
            os.read(back, 1)
            samples.append(time.perf_counter() - started)
        child.stdin.close()
        child.wait(5)
    samples.sort()
    return round(samples[len(samples) // 2] * 1e6, 1)


def describe_load(sample: dict[str, Any]) -> str:
    busiest = ", ".join(f"{b['process']} {b['cpu_percent']:.0f}%" for b in sample["busiest"])
    la = " ".join(f"{x:.2f}" for x in sample["loadavg"])
    text = f"load average {la}; other processes {sample['others_percent']:.0f}% of one core" + (
        f" ({busiest})" if busiest else ""
    )
    if "calibration_ms" in sample:
        text += f"; CPU speed check {sample['calibration_ms']:.1f} ms"
    if "wakeup_us" in sample:
        text += f", wake-up round trip {sample['wakeup_us']:.0f} µs"
    return text
