"""The task message: what a publisher puts on ``agents.tasks.<type>``.

A task arrives either as a JSON object (``description``, optional ``input``,
optional ``task_id``, optional ``submitted_at``, optional ``submitted_by``: who
submitted it, as the gateway states it) or as plain text (the text is the
description). Its id is the ``Foundry-Task-Id`` header (set when a worker or the
gateway moves a task to another lane or to a schedule, where ``Nats-Msg-Id`` is
used for de-duplication of the move), else ``Nats-Msg-Id``, else the payload's
``task_id``, else ``seq-<stream sequence>``.

Two optional headers shape when and in what order it runs: ``Foundry-Priority``
(``high``, ``normal``, ``low``) and ``Foundry-Not-Before`` (Unix seconds).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from foundry import codec
from foundry.contracts.enums import TaskPriority
from foundry.errors import MalformedTask

TASK_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
TASK_ID_HINT = (
    "1-128 characters: letters, digits, '_', '-', '.', ':' (starting with a letter or digit)"
)
MSG_ID_HEADER = "Nats-Msg-Id"
TASK_ID_HEADER = "Foundry-Task-Id"
PRIORITY_HEADER = "Foundry-Priority"
NOT_BEFORE_HEADER = "Foundry-Not-Before"
SEQ_ID_PREFIX = "seq-"
# submitted_at is a Unix time: not before 2000, not more than a day ahead of this host
EARLIEST_SUBMIT = 946684800.0
SUBMIT_SKEW = 86400.0


def valid_task_id(value: object) -> bool:
    return isinstance(value, str) and TASK_ID_RE.fullmatch(value) is not None


def seq_task_id(stream_seq: int) -> str:
    return f"{SEQ_ID_PREFIX}{stream_seq}"


@dataclass(frozen=True)
class Task:
    """A task as a worker sees it."""

    task_id: str
    agent_type: str
    description: str
    input: Any = None
    submitted_at: float | None = None
    submitted_by: str | None = None
    priority: TaskPriority = TaskPriority.NORMAL
    not_before: float | None = None  # Unix time: the task does not start earlier

    def headers(self) -> dict[str, str]:
        """What a publisher sets beside the payload: the id, and the start time if any
        (the priority travels in the subject: see :meth:`foundry.names.Names.tasks`)."""
        out = {MSG_ID_HEADER: self.task_id}
        if self.not_before is not None:
            out[NOT_BEFORE_HEADER] = f"{self.not_before:.3f}"
        return out

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
    for name in (TASK_ID_HEADER, MSG_ID_HEADER):
        header_id = (headers or {}).get(name)
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
    """Read a task payload; raises MalformedTask naming the reason and the task's id."""
    fallback_id = task_id_from(headers, None, stream_seq)
    priority, not_before = _scheduling(fallback_id, headers)
    if len(data) > max_bytes:
        raise MalformedTask(
            fallback_id, f"payload is {len(data)} bytes, over the {max_bytes} limit"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedTask(fallback_id, f"payload is not valid UTF-8 ({exc.reason})") from None
    stripped = text.strip()
    if not stripped:
        raise MalformedTask(fallback_id, "payload is empty: send a description or a JSON object")
    if stripped[0] not in "{[":
        return Task(fallback_id, agent_type, stripped, priority=priority, not_before=not_before)
    try:
        body = codec.loads(stripped)
    except codec.JSONDecodeError as exc:
        raise MalformedTask(
            fallback_id, f"payload looks like JSON but does not parse: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise MalformedTask(fallback_id, "JSON payload must be an object, not an array")
    task_id = task_id_from(headers, body.get("task_id"), stream_seq)
    description = body.get("description", "")
    if not isinstance(description, str):
        raise MalformedTask(task_id, "'description' must be a string")
    if not description and body.get("input") is None:
        raise MalformedTask(task_id, "task has neither 'description' nor 'input'")
    submitter = body.get("submitted_by")
    return Task(
        task_id,
        agent_type,
        description,
        body.get("input"),
        _submitted_at(task_id, body),
        submitter[:200] if isinstance(submitter, str) and submitter else None,
        priority,
        not_before,
    )


def _scheduling(task_id: str, headers: dict[str, str] | None) -> tuple[TaskPriority, float | None]:
    """The ``Foundry-Priority`` and ``Foundry-Not-Before`` headers, validated."""
    headers = headers or {}
    raw = headers.get(PRIORITY_HEADER) or ""
    try:
        priority = TaskPriority(raw.strip().lower()) if raw else TaskPriority.NORMAL
    except ValueError:
        raise MalformedTask(
            task_id,
            f"header {PRIORITY_HEADER}={raw[:40]!r} is not one of "
            f"{', '.join(p.value for p in TaskPriority)}",
        ) from None
    raw = headers.get(NOT_BEFORE_HEADER) or ""
    if not raw:
        return priority, None
    try:
        not_before = float(raw)
    except ValueError:
        not_before = math.nan
    if not math.isfinite(not_before) or not_before < EARLIEST_SUBMIT:
        raise MalformedTask(
            task_id,
            f"header {NOT_BEFORE_HEADER}={raw[:40]!r} is not a Unix time in seconds (after 2000)",
        )
    return priority, not_before


def _submitted_at(task_id: str, body: dict[str, Any]) -> float | None:
    value = body.get("submitted_at")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise MalformedTask(task_id, "'submitted_at' must be a Unix time in seconds")
    if not EARLIEST_SUBMIT <= value <= time.time() + SUBMIT_SKEW:
        raise MalformedTask(
            task_id,
            f"'submitted_at'={value!r} is not a plausible Unix time (seconds since 1970, "
            "after 2000 and not in the future)",
        )
    return float(value)
