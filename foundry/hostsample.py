"""The host sample: what the monitor measures on one host every ``FOUNDRY_HOST_INTERVAL``.

Published as JSON on ``names.host(socket.gethostname())`` (core NATS). The
healer's remediation policies read it with :meth:`HostSample.from_payload`;
the keys below are the contract between the two services.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from foundry import codec


@dataclass(frozen=True)
class DiskSample:
    """One watched path: usage of its file system."""

    path: str
    percent: float
    inodes_percent: float
    free_bytes: int


@dataclass(frozen=True)
class ProcessSample:
    """One fleet process (a worker known from its heartbeats)."""

    worker_id: str
    agent_type: str
    pid: int
    rss_bytes: int
    cpu_percent: float


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
        return codec.dumps(self.to_json())

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> HostSample:
        """Build from decoded JSON; raises KeyError/TypeError/ValueError when malformed."""
        return cls(
            host=str(body["host"]),
            at=float(body["at"]),
            cpu_percent=float(body["cpu_percent"]),
            load1=float(body["load1"]),
            memory_percent=float(body["memory_percent"]),
            swap_percent=float(body["swap_percent"]),
            disks=[_disk(d) for d in body.get("disks", [])],
            nats_ok=bool(body["nats_ok"]),
            nats_rtt_seconds=_opt_float(body.get("nats_rtt_seconds")),
            redis_ok=bool(body["redis_ok"]),
            redis_rtt_seconds=_opt_float(body.get("redis_rtt_seconds")),
            processes=[_process(p) for p in body.get("processes", [])],
        )

    @classmethod
    def from_payload(cls, data: bytes | str) -> HostSample:
        """Decode a published sample; raises ValueError when it is not one."""
        try:
            body = codec.loads(data)
            if not isinstance(body, dict):
                raise TypeError("not a JSON object")
            return cls.from_json(body)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a host sample: {exc!r}") from None


def _disk(d: dict[str, Any]) -> DiskSample:
    return DiskSample(
        str(d["path"]), float(d["percent"]), float(d["inodes_percent"]), int(d["free_bytes"])
    )


def _process(p: dict[str, Any]) -> ProcessSample:
    return ProcessSample(
        str(p["worker_id"]),
        str(p["agent_type"]),
        int(p["pid"]),
        int(p["rss_bytes"]),
        float(p["cpu_percent"]),
    )


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
