"""Control requests and replies (core NATS request/reply).

- ``agents.control.<verb>`` → the healer: :class:`ControlRequest` in,
  :class:`ControlReply` out. An error reply carries ``error`` (a sentence) and
  ``code`` (``bad_request``, ``not_found``, ``conflict``, ``internal``).
- ``agents.control.cancel.notice`` → every worker: the ``cancel`` request, passed on
  once the task is marked cancelled.
- ``agents.control.workers.<type>`` → every worker of a type:
  :class:`WorkerControl` (a concurrency change).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.enums import ControlVerb
from foundry.contracts.fields import MessageRejected, Reader
from foundry.contracts.heartbeat import WORKER_ID_RE
from foundry.contracts.task import TASK_ID_RE

MAX_CONTROL_BYTES = 64 * 1024
ERROR_CODES = ("bad_request", "not_found", "conflict", "internal")
_req = Reader("control")
_worker = Reader("worker_control")


@dataclass(frozen=True)
class ControlRequest:
    """A request to the healer: ``worker_id`` names the slot to ``release``, ``task_id``
    the task to ``cancel``."""

    verb: ControlVerb
    worker_id: str | None = None
    task_id: str | None = None

    def to_payload(self) -> bytes:
        body = {"worker_id": self.worker_id, "task_id": self.task_id}
        return codec.dumps({k: v for k, v in body.items() if v is not None})

    @classmethod
    def from_payload(cls, verb: ControlVerb, data: bytes) -> ControlRequest:
        body = _req.object(data, MAX_CONTROL_BYTES) if data.strip() else {}
        worker_id = _req.string(
            body, "worker_id", required=verb is ControlVerb.RELEASE, pattern=WORKER_ID_RE
        )
        task_id = _req.string(
            body, "task_id", required=verb is ControlVerb.CANCEL, pattern=TASK_ID_RE
        )
        return cls(verb, worker_id, task_id)


@dataclass(frozen=True)
class ControlReply:
    """The healer's answer: ``body`` on success, else ``error`` and ``code`` (with any
    figures that explain the error in ``body``)."""

    body: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    code: str | None = None

    @classmethod
    def failure(cls, code: str, error: str, **extra: Any) -> ControlReply:
        assert code in ERROR_CODES, code
        return cls(body=extra, error=error, code=code)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_payload(self) -> bytes:
        if self.error is not None:
            return codec.dumps({**self.body, "error": self.error, "code": self.code})
        return codec.dumps(self.body)

    @classmethod
    def from_payload(cls, data: bytes) -> ControlReply:
        body = _req.object(data, 16 * 1024 * 1024)
        if "error" in body:
            error = _req.string(body, "error")
            code = body.pop("code", None)
            extra = {k: v for k, v in body.items() if k != "error"}
            return cls(extra, error, code if code in ERROR_CODES else "internal")
        return cls(body=body)


@dataclass(frozen=True)
class WorkerControl:
    """``{"concurrency": n}``: run at most ``n`` tasks at once; null restores the default."""

    concurrency: int | None

    def to_payload(self) -> bytes:
        return codec.dumps({"concurrency": self.concurrency})

    @classmethod
    def from_payload(cls, data: bytes, max_concurrency: int) -> WorkerControl:
        body = _worker.object(data, MAX_CONTROL_BYTES)
        if "concurrency" not in body:
            raise MessageRejected("worker_control", "missing", "'concurrency' is required")
        level = _worker.integer(body, "concurrency", required=False, low=1, high=max_concurrency)
        return cls(level)
