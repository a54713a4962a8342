"""The host sample: what the monitor measures on one host every ``FOUNDRY_HOST_INTERVAL``.

Published on ``agents.host.<host>`` (core NATS). The healer's remediation
policies act on it (recycles, cleanups, throttles), so it is validated like
every other message.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.fields import Reader
from foundry.contracts.heartbeat import HOST_RE, WORKER_ID_RE
from foundry.names import AGENT_TYPE_RE

MAX_SAMPLE_BYTES = 1024 * 1024
MAX_DISKS = 64
MAX_PROCESSES = 4096
_read = Reader("host_sample")


@dataclass(frozen=True)
class DiskSample:
    """One watched path: usage of its file system."""

    path: str
    percent: float
    inodes_percent: float
    free_bytes: int

    @classmethod
    def from_json(cls, value: Any) -> DiskSample:
        d = _read.mapping(value, "a disk")
        return cls(
            _read.string(d, "path", max_len=4096),
            _read.number(d, "percent", high=100.0),
            _read.number(d, "inodes_percent", high=100.0),
            _read.integer(d, "free_bytes", high=2**62),
        )


@dataclass(frozen=True)
class ProcessSample:
    """One fleet process (a worker known from its heartbeats)."""

    worker_id: str
    agent_type: str
    pid: int
    rss_bytes: int
    cpu_percent: float

    @classmethod
    def from_json(cls, value: Any) -> ProcessSample:
        p = _read.mapping(value, "a process")
        return cls(
            _read.string(p, "worker_id", pattern=WORKER_ID_RE),
            _read.string(p, "agent_type", pattern=AGENT_TYPE_RE),
            _read.integer(p, "pid", low=1, high=2**31 - 1),
            _read.integer(p, "rss_bytes", high=2**50),
            _read.number(p, "cpu_percent", high=1e5),
        )


@dataclass(frozen=True)
class HostSample:
    """A host's resources and the reachability of the broker and the cache."""

    host: str
    at: float
    cpu_percent: float
    load1: float
    memory_percent: float
    swap_percent: float
    disks: list[DiskSample] = field(default_factory=list)
    nats_ok: bool = True
    nats_rtt_seconds: float | None = None
    redis_ok: bool = True
    redis_rtt_seconds: float | None = None
    processes: list[ProcessSample] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_payload(self) -> bytes:
        return codec.dumps(self)

    @classmethod
    def from_payload(cls, data: bytes) -> HostSample:
        body = _read.object(data, MAX_SAMPLE_BYTES)
        return cls(
            host=_read.string(body, "host", pattern=HOST_RE),
            at=_read.number(body, "at", high=1e11),
            cpu_percent=_read.number(body, "cpu_percent", high=100.0),
            load1=_read.number(body, "load1", high=1e6),
            memory_percent=_read.number(body, "memory_percent", high=100.0),
            swap_percent=_read.number(body, "swap_percent", high=100.0),
            disks=_read.items(body, "disks", DiskSample.from_json, max_items=MAX_DISKS),
            nats_ok=_read.boolean(body, "nats_ok"),
            nats_rtt_seconds=_read.number(body, "nats_rtt_seconds", required=False, high=1e6),
            redis_ok=_read.boolean(body, "redis_ok"),
            redis_rtt_seconds=_read.number(body, "redis_rtt_seconds", required=False, high=1e6),
            processes=_read.items(
                body, "processes", ProcessSample.from_json, max_items=MAX_PROCESSES
            ),
        )
