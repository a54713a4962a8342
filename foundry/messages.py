"""Message types carried on NATS and stored in Redis, as JSON.

A task arrives either as a JSON object (``description``, optional ``input``,
optional ``task_id``, optional ``submitted_by``: who submitted it, as the
gateway states it) or as plain text (the text is the description). Its id
is the ``Nats-Msg-Id`` header, else the payload's ``task_id``, else
``seq-<stream sequence>``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.errors import MalformedTask

TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
TASK_ID_HINT = (
    "1-128 characters: letters, digits, '_', '-', '.', ':' (starting with a letter or digit)"
)
MSG_ID_HEADER = "Nats-Msg-Id"

QUEUED, RUNNING, COMPLETED, FAILED, DEAD = "queued", "running", "completed", "failed", "dead"
FINAL_STATUSES = frozenset({COMPLETED, FAILED, DEAD})
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, DEAD)


def valid_task_id(value: object) -> bool:
    return isinstance(value, str) and TASK_ID_RE.fullmatch(value) is not None


def seq_task_id(stream_seq: int) -> str:
    return f"seq-{stream_seq}"


@dataclass(frozen=True)
class Task:
    """A task as a worker sees it."""

    task_id: str
    agent_type: str
    description: str
    input: Any = None
    submitted_at: float | None = None
    submitted_by: str | None = None

    def to_payload(self) -> bytes:
        body: dict[str, Any] = {"task_id": self.task_id, "description": self.description}
        if self.input is not None:
            body["input"] = self.input
        if self.submitted_at is not None:
            body["submitted_at"] = self.submitted_at
        if self.submitted_by is not None:
            body["submitted_by"] = self.submitted_by
        return codec.dumps(body)


def task_id_from(headers: dict[str, str] | None, payload_id: object, stream_seq: int) -> str:
    header_id = (headers or {}).get(MSG_ID_HEADER)
    if header_id and valid_task_id(header_id):
        return header_id
    if valid_task_id(payload_id):
        return str(payload_id)
    return seq_task_id(stream_seq)


def parse_task(
    data: bytes,
    headers: dict[str, str] | None,
    agent_type: str,
    stream_seq: int,
    max_bytes: int,
) -> Task:
    """Read a task payload; raises MalformedTask with the reason (its id is on ``.task_id``)."""
    fallback_id = task_id_from(headers, None, stream_seq)
    if len(data) > max_bytes:
        raise _malformed(fallback_id, f"payload is {len(data)} bytes, over the {max_bytes} limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(fallback_id, f"payload is not valid UTF-8 ({exc.reason})") from None
    stripped = text.strip()
    if not stripped:
        raise _malformed(fallback_id, "payload is empty: send a description or a JSON object")
    if stripped[0] not in "{[":
        return Task(fallback_id, agent_type, stripped)
    try:
        body = codec.loads(stripped)
    except codec.JSONDecodeError as exc:
        raise _malformed(
            fallback_id, f"payload looks like JSON but does not parse: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise _malformed(fallback_id, "JSON payload must be an object, not an array")
    task_id = task_id_from(headers, body.get("task_id"), stream_seq)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise _malformed(task_id, "'description' must be a string")
    if not description and body.get("input") is None:
        raise _malformed(task_id, "task has neither 'description' nor 'input'")
    submitted = body.get("submitted_at")
    submitter = body.get("submitted_by")
    return Task(
        task_id,
        agent_type,
        description,
        body.get("input"),
        float(submitted) if isinstance(submitted, int | float) else None,
        submitter[:200] if isinstance(submitter, str) and submitter else None,
    )


def _malformed(task_id: str, reason: str) -> MalformedTask:
    err = MalformedTask(reason)
    err.task_id = task_id  # type: ignore[attr-defined]
    return err


def event(kind: str, **fields: Any) -> bytes:
    """An event payload: ``kind``, ``at`` (unix seconds) and the given fields."""
    return codec.dumps({"kind": kind, "at": time.time(), **fields})


@dataclass
class Heartbeat:
    """What a worker says about itself every heartbeat interval."""

    worker_id: str
    agent_type: str
    host: str
    pid: int
    slot: int | None
    state: str
    in_flight: list[dict[str, Any]] = field(default_factory=list)
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

    @classmethod
    def from_payload(cls, data: bytes) -> Heartbeat:
        body = codec.loads(data)
        known = {k: body[k] for k in cls.__dataclass_fields__ if k in body}
        return cls(**known)
