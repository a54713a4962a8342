"""The heartbeat: what a worker says about itself on ``agents.heartbeat.<type>.<worker_id>``.

A worker beats every heartbeat interval, and at once when it takes new tasks,
so the healer knows what a worker held when it died. ``in_flight`` lists those
tasks with the ack subject of each delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.enums import WorkerState
from foundry.contracts.fields import MessageRejected, Reader
from foundry.contracts.task import TASK_ID_RE
from foundry.histogram import TASK_SECONDS_BOUNDS
from foundry.names import AGENT_TYPE_RE

# A worker id is one subject token: no dots, no wildcards. The healer's are
# ``<type>-<index>@<host>`` (foundry.hostid), unique across the cluster.
WORKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:/@-]{0,127}$")
HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")
ACK_SUBJECT_RE = re.compile(r"^\$JS\.ACK\.[A-Za-z0-9_.:@-]{1,240}$")  # @: a lane
MAX_IN_FLIGHT = 4096
# Names of limits (type:<t>, llm:<model>, tokens:<model>) and of models in the counter tables.
COUNTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,135}$")
MAX_COUNTER_NAMES = 64
MAX_HEARTBEAT_BYTES = 2 * 1024 * 1024
PROGRESS_NOTE_MAX = 200
NBUCKETS = len(TASK_SECONDS_BOUNDS) + 1
_TIME_MAX = 1e11  # a Unix time, generously

_read = Reader("heartbeat")


@dataclass
class InFlightEntry:
    """One delivery a worker holds: running its handler, or held back (``running`` false)."""

    task_id: str
    stream_seq: int
    reply: str
    delivery: int
    started_at: float
    running: bool = True
    progress: str | None = None
    progress_at: float | None = None

    @classmethod
    def from_json(cls, value: Any) -> InFlightEntry:
        body = _read.mapping(value, "an in_flight entry")
        return cls(
            task_id=_read.string(body, "task_id", pattern=TASK_ID_RE),
            stream_seq=_read.integer(body, "stream_seq", low=1),
            reply=_read.string(body, "reply", pattern=ACK_SUBJECT_RE),
            delivery=_read.integer(body, "delivery", low=1, high=10**6),
            started_at=_read.number(body, "started_at", high=_TIME_MAX),
            running=_read.boolean(body, "running", required=False, default=True),
            progress=_read.string(body, "progress", required=False, max_len=PROGRESS_NOTE_MAX),
            progress_at=_read.number(body, "progress_at", required=False, high=_TIME_MAX),
        )


def _buckets(value: Any) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) not in (0, NBUCKETS):
        raise _read.reject("size", f"histogram buckets must be a list of {NBUCKETS} counts")
    for count in value:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _read.reject("type", "histogram bucket counts must be whole numbers >= 0")
    return list(value)


def _counts(body: dict[str, Any], key: str, whole: bool = True) -> dict[str, Any]:
    """A small table of counters by limit or model name (rate limits, tokens)."""
    value = body.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_COUNTER_NAMES:
        raise _read.reject("size", f"{key} must be an object of at most {MAX_COUNTER_NAMES} names")
    for name, count in value.items():
        if not isinstance(name, str) or not COUNTER_NAME_RE.fullmatch(name):
            raise _read.reject("pattern", f"{key}: {str(name)[:40]!r} is not a limit or model name")
        kinds = int if whole else (int, float)
        if isinstance(count, bool) or not isinstance(count, kinds) or not 0 <= count < 1e15:
            raise _read.reject("type", f"{key}[{name!r}] must be a number >= 0")
    return dict(value)


@dataclass
class Heartbeat:
    """A worker's state and counters at ``sent_at``."""

    worker_id: str
    agent_type: str
    host: str
    pid: int
    slot: int | None
    state: WorkerState
    in_flight: list[InFlightEntry] = field(default_factory=list)
    processed: int = 0
    failed: int = 0
    started_at: float = 0.0
    sent_at: float = 0.0
    rss_bytes: int = 0
    cpu_percent: float = 0.0
    loop_lag_seconds: float = 0.0
    concurrency: int = 0
    task_seconds_sum: float = 0.0
    wait_seconds_sum: float = 0.0
    # Per-bucket counts over foundry.histogram.TASK_SECONDS_BOUNDS (+Inf last).
    task_seconds_buckets: list[int] = field(default_factory=list)
    wait_seconds_buckets: list[int] = field(default_factory=list)
    # Rate limits (foundry.ratelimit): waits and seconds waited by limit name, and the llm
    # handler's tokens and provider 429s by model.
    limit_waits: dict[str, int] = field(default_factory=dict)
    limit_wait_seconds: dict[str, float] = field(default_factory=dict)
    llm_prompt_tokens: dict[str, int] = field(default_factory=dict)
    llm_completion_tokens: dict[str, int] = field(default_factory=dict)
    llm_throttled: dict[str, int] = field(default_factory=dict)

    def to_payload(self) -> bytes:
        return codec.dumps(self)

    def running_task_ids(self) -> frozenset[str]:
        return frozenset(e.task_id for e in self.in_flight if e.running)

    @classmethod
    def from_payload(cls, data: bytes, subject: str | None = None) -> Heartbeat:
        """Parse and validate; with ``subject``, its type and worker id tokens must agree."""
        body = _read.object(data, MAX_HEARTBEAT_BYTES)
        beat = cls(
            worker_id=_read.string(body, "worker_id", pattern=WORKER_ID_RE),
            agent_type=_read.string(body, "agent_type", pattern=AGENT_TYPE_RE),
            host=_read.string(body, "host", pattern=HOST_RE),
            pid=_read.integer(body, "pid", low=1, high=2**31 - 1),
            slot=_read.integer(body, "slot", required=False, high=65535),
            state=_read.enum(body, "state", WorkerState),
            in_flight=_read.items(
                body, "in_flight", InFlightEntry.from_json, max_items=MAX_IN_FLIGHT
            ),
            processed=_read.integer(body, "processed", required=False, default=0),
            failed=_read.integer(body, "failed", required=False, default=0),
            started_at=_read.number(body, "started_at", required=False, high=_TIME_MAX, default=0),
            sent_at=_read.number(body, "sent_at", required=False, high=_TIME_MAX, default=0),
            rss_bytes=_read.integer(body, "rss_bytes", required=False, high=2**50, default=0),
            cpu_percent=_read.number(body, "cpu_percent", required=False, high=1e5, default=0),
            loop_lag_seconds=_read.number(
                body, "loop_lag_seconds", required=False, high=1e6, default=0
            ),
            concurrency=_read.integer(body, "concurrency", required=False, high=65536, default=0),
            task_seconds_sum=_read.number(body, "task_seconds_sum", required=False, default=0),
            wait_seconds_sum=_read.number(body, "wait_seconds_sum", required=False, default=0),
            task_seconds_buckets=_buckets(body.get("task_seconds_buckets")),
            wait_seconds_buckets=_buckets(body.get("wait_seconds_buckets")),
            limit_waits=_counts(body, "limit_waits"),
            limit_wait_seconds=_counts(body, "limit_wait_seconds", whole=False),
            llm_prompt_tokens=_counts(body, "llm_prompt_tokens"),
            llm_completion_tokens=_counts(body, "llm_completion_tokens"),
            llm_throttled=_counts(body, "llm_throttled"),
        )
        if subject is not None:
            beat.check_subject(subject)
        return beat

    def check_subject(self, subject: str) -> None:
        """The subject ``….heartbeat.<type>.<worker_id>`` must name this beat's sender."""
        parts = subject.rsplit(".", 2)
        if len(parts) != 3 or parts[1] != self.agent_type or parts[2] != self.worker_id:
            raise MessageRejected(
                "heartbeat",
                "subject",
                f"worker {self.worker_id!r} of type {self.agent_type!r} beat on {subject!r}",
            )
