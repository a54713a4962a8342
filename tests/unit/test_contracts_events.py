"""TaskEvent and HealEvent: validation, the heal.<action> kind, flattened details, round trips."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import (
    HealAction,
    HealEvent,
    MessageRejected,
    SlotKind,
    TaskEvent,
    TaskStatus,
)
from foundry.contracts.events import MAX_DETAILS
from tests.unit.samples import NOW, encode


def task_event_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "task.completed",
        "status": "completed",
        "task_id": "task-1",
        "agent_type": "coder",
        "at": NOW,
        "worker_id": "coder-0",
        "attempt": 2,
        "error": None,
        "duration_seconds": 1.25,
        "wait_seconds": 0.5,
        "duplicate": False,
    }
    body.update(changes)
    return body


def heal_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "heal.relaunch",
        "at": NOW,
        "host": "host-1",
        "slot": "coder-0",
        "slot_kind": "worker",
        "agent_type": "coder",
        "worker_id": "coder-0",
        "reason": "exit",
        "old_pid": 100,
        "new_pid": 101,
        "backoff_seconds": 0.25,
    }
    body.update(changes)
    return body


def rejected(kind: str, parse: Any, data: bytes) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        parse(data)
    assert caught.value.kind == kind
    return caught.value


def test_task_event_round_trip() -> None:
    event = TaskEvent(
        TaskStatus.FAILED, "task-1", "coder", at=NOW, worker_id="coder-0", attempt=3,
        error="boom", duration_seconds=2.0, wait_seconds=0.1, duplicate=True,
    )  # fmt: skip
    assert event.kind == "task.failed"
    assert TaskEvent.from_payload(event.to_payload()) == event


def test_task_event_parses_and_defaults_optionals() -> None:
    event = TaskEvent.from_payload(encode(task_event_body()))
    assert event.status is TaskStatus.COMPLETED and event.attempt == 2
    minimal = {"status": "queued", "task_id": "t", "agent_type": "coder", "at": NOW}
    event = TaskEvent.from_payload(encode(minimal))
    assert (event.worker_id, event.attempt, event.error, event.duplicate) == (
        None, None, None, False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "exploded"}, "enum"),
        ({"status": None}, "missing"),
        ({"task_id": "no spaces"}, "pattern"),
        ({"agent_type": "Coder"}, "pattern"),
        ({"at": 1e11 + 1}, "range"),
        ({"at": "now"}, "type"),
        ({"worker_id": "a.b"}, "pattern"),
        ({"attempt": 0}, "range"),
        ({"attempt": 10**6 + 1}, "range"),
        ({"error": "e" * (4096 * 4 + 1)}, "size"),
        ({"duration_seconds": -0.5}, "range"),
        ({"duplicate": 1}, "type"),
    ],
)
def test_task_event_rejections(changes: dict[str, Any], reason: str) -> None:
    exc = rejected("task_event", TaskEvent.from_payload, encode(task_event_body(**changes)))
    assert exc.reason == reason


def test_heal_event_round_trip_flattens_details() -> None:
    event = HealEvent(
        HealAction.QUARANTINE, "host-1", at=NOW, slot="coder-0", slot_kind=SlotKind.WORKER,
        agent_type="coder", worker_id="coder-0", reason="6 deaths",
        details={"restarts": 6, "last_error": "exit 1", "evidence": [{"pid": 3}]},
    )  # fmt: skip
    flat = event.to_json()
    assert flat["kind"] == "heal.quarantine" and flat["restarts"] == 6
    assert "details" not in flat
    assert HealEvent.from_payload(event.to_payload()) == event


def test_heal_event_keeps_unknown_fields_as_details() -> None:
    event = HealEvent.from_payload(encode(heal_body()))
    assert event.action is HealAction.RELAUNCH and event.slot_kind is SlotKind.WORKER
    assert event.details == {"old_pid": 100, "new_pid": 101, "backoff_seconds": 0.25}


def test_details_cannot_override_the_common_fields() -> None:
    event = HealEvent(HealAction.AUDIT, "host-1", at=NOW, details={"host": "evil", "kind": "x"})
    flat = event.to_json()
    assert flat["host"] == "host-1" and flat["kind"] == "heal.audit"


@pytest.mark.parametrize("kind", ["task.relaunch", "relaunch", "heal", "heal.", "heal.explode"])
def test_kind_must_be_heal_and_a_known_action(kind: str) -> None:
    exc = rejected("heal_event", HealEvent.from_payload, encode(heal_body(kind=kind)))
    assert exc.reason == "enum"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"kind": None}, "missing"),
        ({"kind": 5}, "type"),
        ({"host": "bad host"}, "pattern"),
        ({"host": None}, "missing"),
        ({"at": -1}, "range"),
        ({"slot": "a.b"}, "pattern"),
        ({"slot_kind": "robot"}, "enum"),
        ({"agent_type": "x" * 65}, "size"),
        ({"reason": 3}, "type"),
    ],
)
def test_heal_event_rejections(changes: dict[str, Any], reason: str) -> None:
    exc = rejected("heal_event", HealEvent.from_payload, encode(heal_body(**changes)))
    assert exc.reason == reason


def test_too_many_detail_fields() -> None:
    # Given the three figures of heal_body(), up to MAX_DETAILS in all are kept
    fits = heal_body(**{f"d{i}": i for i in range(MAX_DETAILS - 3)})
    assert len(HealEvent.from_payload(encode(fits)).details) == MAX_DETAILS
    # and one more is refused
    exc = rejected("heal_event", HealEvent.from_payload, encode({**fits, "one_more": 1}))
    assert exc.reason == "size"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (0.5, 0.5),
        (0, 0.0),
        (-1, None),
        (True, None),
        ("7", None),
        (None, None),
        (1e15, None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_number_is_a_finite_non_negative_figure(value: Any, expected: float | None) -> None:
    event = HealEvent(HealAction.RELAUNCH, "h", at=NOW, details={"x": value})
    got = event.number("x")
    assert got == expected and (got is None or isinstance(got, float))
    assert event.number("absent") is None


def test_text_reads_strings_only() -> None:
    event = HealEvent(HealAction.RELAUNCH, "h", at=NOW, details={"s": "yes", "n": 1})
    assert (event.text("s"), event.text("n"), event.text("absent")) == ("yes", None, None)
