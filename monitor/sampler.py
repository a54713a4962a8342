"""Host sampling with psutil: CPU, load, memory, disks, fleet processes; broker and cache probes.

Workers are found through their heartbeats. A worker on this host whose pid
is visible here is measured directly (so a wedged worker that stopped beating
still shows its memory); otherwise its own last heartbeat figures are used.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS

from foundry.contracts import DiskSample, Heartbeat, HostSample, ProcessSample

PROBE_TIMEOUT = 2.0
PID_START_SLACK = 5.0  # a worker stamps started_at a moment after its process starts


@dataclass(frozen=True)
class Probe:
    ok: bool
    rtt_seconds: float | None


class HostSampler:
    """Measures this host; keeps psutil handles between samples so CPU % has a baseline."""

    def __init__(self, hostname: str, watch_paths: Iterable[Path]) -> None:
        self.hostname = hostname
        self.watch_paths = [Path(p) for p in watch_paths]
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(None)

    def measure(self, fleet: list[Heartbeat], nats: Probe, redis: Probe) -> HostSample:
        """One sample (blocking: call it in a thread)."""
        try:
            load1 = os.getloadavg()[0]
        except OSError:  # pragma: no cover - not on Linux
            load1 = 0.0
        return HostSample(
            host=self.hostname,
            at=time.time(),
            cpu_percent=float(psutil.cpu_percent(None)),
            load1=float(load1),
            memory_percent=float(psutil.virtual_memory().percent),
            swap_percent=float(psutil.swap_memory().percent),
            disks=[self._disk(p) for p in self.watch_paths],
            nats_ok=nats.ok,
            nats_rtt_seconds=nats.rtt_seconds,
            redis_ok=redis.ok,
            redis_rtt_seconds=redis.rtt_seconds,
            processes=self._processes(fleet),
        )

    @staticmethod
    def _disk(path: Path) -> DiskSample:
        existing = path.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent  # the data dir may not exist yet: measure its file system
        usage = psutil.disk_usage(str(existing))
        st = os.statvfs(existing)
        inodes = 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files else 0.0
        return DiskSample(str(path), float(usage.percent), round(inodes, 3), int(usage.free))

    def _processes(self, fleet: list[Heartbeat]) -> list[ProcessSample]:
        out = []
        wanted: set[int] = set()
        for beat in fleet:
            rss, cpu = beat.rss_bytes, beat.cpu_percent
            proc = self._local(beat) if beat.host == self.hostname else None
            if proc is not None:
                wanted.add(beat.pid)
                try:
                    with proc.oneshot():
                        rss, cpu = proc.memory_info().rss, proc.cpu_percent(None)
                except psutil.Error:
                    self._procs.pop(beat.pid, None)
            out.append(ProcessSample(beat.worker_id, beat.agent_type, beat.pid, int(rss),
                                     round(float(cpu), 3)))  # fmt: skip
        for pid in set(self._procs) - wanted:
            del self._procs[pid]
        return out

    def _local(self, beat: Heartbeat) -> psutil.Process | None:
        proc = self._procs.get(beat.pid)
        try:
            if proc is None or not proc.is_running():
                proc = psutil.Process(beat.pid)
                proc.cpu_percent(None)
            # The pid may belong to another process by now: it must predate the worker's start.
            if beat.started_at and proc.create_time() > beat.started_at + PID_START_SLACK:
                return None
        except psutil.Error:
            return None
        self._procs[beat.pid] = proc
        return proc


async def probe_nats(nc: NATS) -> Probe:
    """PING/PONG round trip to the server; not ok while disconnected."""
    if not nc.is_connected:
        return Probe(False, None)
    started = time.perf_counter()
    try:
        # flush() is a PING/PONG exchange; timed here for sub-millisecond resolution.
        await asyncio.wait_for(nc.flush(timeout=int(PROBE_TIMEOUT)), PROBE_TIMEOUT + 0.5)
        return Probe(True, round(time.perf_counter() - started, 6))
    except Exception:
        return Probe(False, None)


async def probe_redis(client: aioredis.Redis) -> Probe:
    """PING round trip to Redis."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(_ping(client), PROBE_TIMEOUT)
        return Probe(True, round(time.perf_counter() - started, 6))
    except Exception:
        return Probe(False, None)


async def _ping(client: aioredis.Redis) -> Any:
    return await client.ping()
