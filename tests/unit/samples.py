"""Valid messages to start from: each test changes one field and checks the verdict."""

from __future__ import annotations

from typing import Any

from foundry import codec
from foundry.contracts.heartbeat import NBUCKETS

NOW = 1_700_000_000.0
ACK = "$JS.ACK.AGENT_TASKS.workers-coder.1.42.7.1700000000000000000.0"


def in_flight_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "task_id": "task-42",
        "stream_seq": 42,
        "reply": ACK,
        "delivery": 1,
        "started_at": NOW,
        "running": True,
        "progress": "halfway",
        "progress_at": NOW + 1,
    }
    entry.update(changes)
    return entry


def beat_body(**changes: Any) -> dict[str, Any]:
    """A heartbeat of worker ``coder-0`` holding one task; ``changes`` override fields."""
    body: dict[str, Any] = {
        "worker_id": "coder-0",
        "agent_type": "coder",
        "host": "host-1.example",
        "pid": 4242,
        "slot": 0,
        "state": "busy",
        "in_flight": [in_flight_entry()],
        "processed": 10,
        "failed": 1,
        "started_at": NOW,
        "sent_at": NOW + 5,
        "rss_bytes": 50_000_000,
        "cpu_percent": 12.5,
        "loop_lag_seconds": 0.001,
        "concurrency": 16,
        "task_seconds_sum": 3.5,
        "wait_seconds_sum": 0.25,
        "task_seconds_buckets": [1] * NBUCKETS,
        "wait_seconds_buckets": [0] * NBUCKETS,
    }
    body.update(changes)
    return body


def encode(body: Any) -> bytes:
    return codec.dumps(body)
