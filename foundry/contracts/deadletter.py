"""Dead letters: the record kept on ``agents.dead.<type>`` (stream AGENT_DEAD), and the
server's max-deliveries advisory that leads to one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from foundry import codec
from foundry.contracts.enums import DeadLetterAction
from foundry.contracts.fields import Reader
from foundry.contracts.task import TASK_ID_RE
from foundry.names import AGENT_TYPE_RE

STREAM_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CONSUMER_RE = re.compile(r"^[A-Za-z0-9_@-]{1,64}$")  # @: a lane (foundry.names)
MAX_DEAD_BYTES = 8 * 1024 * 1024
MAX_EVIDENCE = 64
_dead = Reader("dead_letter")
_advisory = Reader("advisory")


@dataclass(frozen=True)
class DeadLetter:
    """A task that will not be run again, with why and the evidence."""

    task_id: str
    agent_type: str
    stream_seq: int
    action: DeadLetterAction
    reason: str
    payload: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def to_payload(self) -> bytes:
        return codec.dumps(self)

    @classmethod
    def from_payload(cls, data: bytes) -> DeadLetter:
        body = _dead.object(data, MAX_DEAD_BYTES)
        return cls(
            task_id=_dead.string(body, "task_id", pattern=TASK_ID_RE),
            agent_type=_dead.string(body, "agent_type", pattern=AGENT_TYPE_RE),
            stream_seq=_dead.integer(body, "stream_seq", low=1),
            action=_dead.enum(body, "action", DeadLetterAction),
            reason=_dead.string(body, "reason"),
            payload=_dead.string(body, "payload", max_len=MAX_DEAD_BYTES),
            evidence=_dead.items(
                body, "evidence", lambda e: _dead.mapping(e, "evidence"), max_items=MAX_EVIDENCE
            ),
        )


@dataclass(frozen=True)
class MaxDeliveriesAdvisory:
    """``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`` from the server.

    It is a claim to be confirmed with the server before anything is dead-lettered.
    """

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int

    @classmethod
    def from_payload(cls, data: bytes) -> MaxDeliveriesAdvisory:
        body = _advisory.object(data, 64 * 1024)
        return cls(
            stream=_advisory.string(body, "stream", pattern=STREAM_RE),
            consumer=_advisory.string(body, "consumer", pattern=CONSUMER_RE),
            stream_seq=_advisory.integer(body, "stream_seq", low=1),
            deliveries=_advisory.integer(body, "deliveries", low=1, high=10**9),
        )
