"""DeadLetter records and the server's max-deliveries advisory."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import DeadLetter, DeadLetterAction, MaxDeliveriesAdvisory, MessageRejected
from foundry.contracts.deadletter import MAX_DEAD_BYTES, MAX_EVIDENCE
from tests.unit.samples import encode

LETTER = DeadLetter(
    task_id="task-1",
    agent_type="coder",
    stream_seq=42,
    action=DeadLetterAction.POISON,
    reason="in flight at 3 worker deaths",
    payload='{"description": "crash"}',
    evidence=[{"pid": 11, "signal": 9}, {"pid": 12, "signal": 9}],
)

# as nats-server publishes it on $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>
ADVISORY = {
    "type": "io.nats.jetstream.advisory.v1.max_deliver",
    "id": "fKlZJ8b0Yk5q8cTqVn2xJc",
    "timestamp": "2024-05-01T10:00:00.000000000Z",
    "stream": "AGENT_TASKS",
    "consumer": "workers-coder",
    "stream_seq": 42,
    "deliveries": 5,
    "domain": "hub",
}


def letter_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {**LETTER.__dict__, "action": LETTER.action.value}
    body.update(changes)
    return body


def test_dead_letter_round_trip() -> None:
    assert DeadLetter.from_payload(LETTER.to_payload()) == LETTER


def test_evidence_is_optional() -> None:
    body = letter_body()
    del body["evidence"]
    assert DeadLetter.from_payload(encode(body)).evidence == []


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"task_id": "a b"}, "pattern"),
        ({"agent_type": "Coder"}, "pattern"),
        ({"stream_seq": 0}, "range"),
        ({"stream_seq": "42"}, "type"),
        ({"action": "lost"}, "enum"),
        ({"reason": None}, "missing"),
        ({"payload": {"description": "d"}}, "type"),
        ({"evidence": {"pid": 1}}, "type"),
        ({"evidence": ["pid 1"]}, "type"),
        ({"evidence": [{}] * (MAX_EVIDENCE + 1)}, "size"),
    ],
)
def test_dead_letter_rejections(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        DeadLetter.from_payload(encode(letter_body(**changes)))
    assert (caught.value.kind, caught.value.reason) == ("dead_letter", reason)


def test_an_oversized_dead_letter() -> None:
    with pytest.raises(MessageRejected) as caught:
        DeadLetter.from_payload(encode(letter_body(payload="x" * MAX_DEAD_BYTES)))
    assert caught.value.reason == "size"


def test_advisory_parses_and_ignores_other_fields() -> None:
    advisory = MaxDeliveriesAdvisory.from_payload(encode(ADVISORY))
    assert advisory == MaxDeliveriesAdvisory("AGENT_TASKS", "workers-coder", 42, 5)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"stream": "AGENT.TASKS"}, "pattern"),
        ({"stream": "*"}, "pattern"),
        ({"consumer": ">"}, "pattern"),
        ({"consumer": None}, "missing"),
        ({"stream_seq": 0}, "range"),
        ({"stream_seq": 4.2}, "type"),
        ({"deliveries": 0}, "range"),
        ({"deliveries": 10**9 + 1}, "range"),
    ],
)
def test_advisory_rejections(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(MessageRejected) as caught:
        MaxDeliveriesAdvisory.from_payload(encode({**ADVISORY, **changes}))
    assert (caught.value.kind, caught.value.reason) == ("advisory", reason)
