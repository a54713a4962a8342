"""A chunk of a task's streamed output, on ``agents.output.<type>.<task_id>`` (core NATS).

A handler calls ``await ctx.emit(text)`` while it runs; the worker cuts what it
emits into chunks of at most :data:`MAX_CHUNK_CHARS` characters, numbers them
from 0 within the attempt (``seq``) and publishes each as a :class:`TaskOutput`.
Every chunk names its ``attempt`` (the JetStream delivery), so a reader can
drop the partial output of an attempt that failed once a later one starts.
The same payloads are kept in the task store's output list, up to a cap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.enums import OutputStream
from foundry.contracts.fields import Reader
from foundry.contracts.task import TASK_ID_RE
from foundry.names import AGENT_TYPE_RE

MAX_CHUNK_CHARS = 8192
# 8192 characters, each at most 6 bytes once JSON-escaped, and the other fields
MAX_OUTPUT_BYTES = 64 * 1024
MAX_SEQ = 10**9
_TIME_MAX = 1e11
_read = Reader("task_output")


@dataclass(frozen=True)
class TaskOutput:
    """One chunk: ``seq`` counts chunks within ``attempt`` from 0."""

    task_id: str
    agent_type: str
    attempt: int
    seq: int
    stream: OutputStream
    data: str
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "agent_type": self.agent_type,
            "attempt": self.attempt,
            "seq": self.seq,
            "stream": self.stream,
            "data": self.data,
            "at": self.at,
        }

    def to_payload(self) -> bytes:
        return codec.dumps(self.to_json())

    @property
    def position(self) -> tuple[int, int]:
        """Where the chunk stands in the task's output: (attempt, seq)."""
        return self.attempt, self.seq

    @classmethod
    def from_payload(cls, data: bytes, subject: str | None = None) -> TaskOutput:
        """Parse and validate; with ``subject``, its last tokens must name the type and task."""
        body = _read.object(data, MAX_OUTPUT_BYTES)
        out = cls(
            task_id=_read.string(body, "task_id", pattern=TASK_ID_RE),
            agent_type=_read.string(body, "agent_type", pattern=AGENT_TYPE_RE),
            attempt=_read.integer(body, "attempt", low=1, high=10**6),
            seq=_read.integer(body, "seq", low=0, high=MAX_SEQ),
            stream=_read.enum(body, "stream", OutputStream),
            data=_read.string(body, "data", max_len=MAX_CHUNK_CHARS),
            at=_read.number(body, "at", high=_TIME_MAX),
        )
        if subject is not None and not subject.endswith(f".output.{out.agent_type}.{out.task_id}"):
            raise _read.reject(
                "subject",
                f"subject {subject[:120]!r} does not name type {out.agent_type!r} "
                f"and task {out.task_id!r}",
            )
        return out
