"""Heartbeat validation: every field's type, range and pattern, the subject check, round trips."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import Heartbeat, MessageRejected, WorkerState
from foundry.contracts.heartbeat import MAX_HEARTBEAT_BYTES, MAX_IN_FLIGHT, NBUCKETS
from tests.unit.samples import NOW, beat_body, encode, in_flight_entry

SUBJECT = "agents.heartbeat.coder.coder-0"


def reject(data: bytes, subject: str | None = None) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        Heartbeat.from_payload(data, subject)
    assert caught.value.kind == "heartbeat"
    return caught.value


def test_a_valid_beat_parses_with_every_field() -> None:
    beat = Heartbeat.from_payload(encode(beat_body()), SUBJECT)
    assert (beat.worker_id, beat.agent_type, beat.pid, beat.slot) == ("coder-0", "coder", 4242, 0)
    assert beat.state is WorkerState.BUSY
    assert beat.in_flight[0].task_id == "task-42" and beat.in_flight[0].stream_seq == 42
    assert beat.running_task_ids() == frozenset({"task-42"})
    assert beat.concurrency == 16 and beat.sent_at == NOW + 5


def test_round_trip_is_equal() -> None:
    # Given a parsed beat, When it is serialised and parsed again, Then nothing changed
    beat = Heartbeat.from_payload(encode(beat_body()))
    assert Heartbeat.from_payload(beat.to_payload()) == beat


def test_a_minimal_beat_takes_the_defaults() -> None:
    body = {"worker_id": "w1", "agent_type": "coder", "host": "h", "pid": 1, "state": "idle"}
    beat = Heartbeat.from_payload(encode(body))
    assert beat.slot is None and beat.in_flight == [] and beat.processed == 0
    assert beat.started_at == 0.0 and beat.task_seconds_buckets == []
    assert Heartbeat.from_payload(beat.to_payload()) == beat


def test_slot_null_is_accepted() -> None:
    assert Heartbeat.from_payload(encode(beat_body(slot=None))).slot is None


def test_the_malformed_example_is_rejected_for_its_worker_id() -> None:
    data = (
        b'{"worker_id": 7, "agent_type": "coder", "host": "h", "pid": 1, "slot": null, '
        b'"state": "idle", "started_at": "x"}'
    )
    exc = reject(data)
    assert exc.reason == "type" and "'worker_id'" in exc.detail
    # with the worker id fixed, the string started_at is what fails
    exc = reject(data.replace(b"7", b'"w7"', 1))
    assert exc.reason == "type" and "'started_at'" in exc.detail


@pytest.mark.parametrize("key", ["worker_id", "agent_type", "host", "pid", "state"])
def test_required_fields_missing_or_null(key: str) -> None:
    body = beat_body()
    del body[key]
    assert reject(encode(body)).reason == "missing"
    assert reject(encode(beat_body(**{key: None}))).reason == "missing"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("worker_id", 7),
        ("agent_type", ["coder"]),
        ("host", {"name": "h"}),
        ("pid", "4242"),
        ("pid", 1.5),
        ("pid", True),
        ("slot", "0"),
        ("processed", 2.0),
        ("started_at", "x"),
        ("started_at", True),
        ("cpu_percent", "12"),
        ("in_flight", "task-42"),
        ("in_flight", [["task-42"]]),
        ("task_seconds_buckets", [1.5] * NBUCKETS),
        ("wait_seconds_buckets", [-1] * NBUCKETS),
    ],
)
def test_wrong_types(key: str, value: Any) -> None:
    exc = reject(encode(beat_body(**{key: value})))
    assert exc.reason == "type", exc.detail


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pid", 0),
        ("pid", -1),
        ("pid", 2**31),
        ("slot", -1),
        ("slot", 65536),
        ("processed", -1),
        ("started_at", -1.0),
        ("started_at", 1e11 + 1),
        ("started_at", 1.7976931348623157e308),
        ("sent_at", -1.7e308),
        ("cpu_percent", 1e5 + 1),
        ("rss_bytes", 2**50 + 1),
        ("concurrency", 65537),
    ],
)
def test_out_of_range(key: str, value: Any) -> None:
    assert reject(encode(beat_body(**{key: value}))).reason == "range"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e309"])
def test_non_finite_numbers_do_not_decode(literal: bytes) -> None:
    # orjson refuses NaN and Infinity, and numbers beyond a double, so such a beat is
    # not JSON at all rather than a beat with an infinite time
    data = encode(beat_body()).replace(b'"cpu_percent":12.5', b'"cpu_percent":' + literal)
    assert literal in data
    assert reject(data).reason == "json"


def test_an_integer_beyond_64_bits_decodes_as_a_float_and_is_no_pid() -> None:
    data = encode(beat_body()).replace(b'"pid":4242', b'"pid":18446744073709551616')
    assert reject(data).reason == "type"


@pytest.mark.parametrize("state", ["zombie", "IDLE", "", 3, ["idle"]])
def test_unknown_state(state: Any) -> None:
    exc = reject(encode(beat_body(state=state)))
    assert exc.reason == "enum" and "starting" in exc.detail


@pytest.mark.parametrize("worker_id", ["coder.0", "coder-*", ">", "-coder", "x" * 129, ""])
def test_worker_id_must_be_one_subject_token(worker_id: str) -> None:
    assert reject(encode(beat_body(worker_id=worker_id))).reason == "pattern"


@pytest.mark.parametrize("agent_type", ["Coder", "coder.x", "a b", "x" * 33])
def test_agent_type_pattern(agent_type: str) -> None:
    assert reject(encode(beat_body(agent_type=agent_type))).reason == "pattern"


def test_oversized_in_flight_list() -> None:
    # Given more entries than a worker may hold, the count is refused before any is read
    exc = reject(encode(beat_body(in_flight=[{}] * (MAX_IN_FLIGHT + 1))))
    assert exc.reason == "size" and str(MAX_IN_FLIGHT) in exc.detail


def test_a_full_in_flight_list_is_accepted() -> None:
    entries = [in_flight_entry(stream_seq=i + 1) for i in range(MAX_IN_FLIGHT)]
    assert len(Heartbeat.from_payload(encode(beat_body(in_flight=entries))).in_flight) == 4096


def test_oversized_payload() -> None:
    exc = reject(b" " * (MAX_HEARTBEAT_BYTES + 1))
    assert exc.reason == "size"


@pytest.mark.parametrize(
    "reply",
    [
        "_INBOX.abc",
        "$JS.ACK.",
        "$JS.ACK.AGENT_TASKS.workers coder.1.42",
        "$JS.ACK.AGENT_TASKS.*.1.42",
        "$JS.ACK.AGENT_TASKS.>",
        "$JS.ACK." + "1" * 241,
    ],
)
def test_in_flight_entry_with_a_bad_reply_subject(reply: str) -> None:
    exc = reject(encode(beat_body(in_flight=[in_flight_entry(reply=reply)])))
    assert exc.reason == "pattern" and "'reply'" in exc.detail


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"task_id": "bad id"}, "pattern"),
        ({"stream_seq": 0}, "range"),
        ({"delivery": 10**6 + 1}, "range"),
        ({"running": "yes"}, "type"),
        ({"progress": "x" * 201}, "size"),
        ({"started_at": None}, "missing"),
    ],
)
def test_in_flight_entry_fields(changes: dict[str, Any], reason: str) -> None:
    exc = reject(encode(beat_body(in_flight=[in_flight_entry(**changes)])))
    assert exc.reason == reason


def test_held_entries_are_not_running() -> None:
    entries = [in_flight_entry(), in_flight_entry(task_id="held-1", stream_seq=43, running=False)]
    beat = Heartbeat.from_payload(encode(beat_body(in_flight=entries)))
    assert beat.running_task_ids() == frozenset({"task-42"})


def test_histogram_buckets_must_have_one_count_per_bound() -> None:
    assert reject(encode(beat_body(task_seconds_buckets=[1, 2]))).reason == "size"
    assert reject(encode(beat_body(wait_seconds_buckets=[0] * (NBUCKETS + 1)))).reason == "size"
    assert reject(encode(beat_body(wait_seconds_buckets={"0": 1}))).reason == "size"


@pytest.mark.parametrize(
    "subject",
    [
        "agents.heartbeat.coder.coder-1",  # another worker's id
        "agents.heartbeat.critic.coder-0",  # another type
        "coder-0",  # not a heartbeat subject
        "coder.coder-0.extra",
    ],
)
def test_subject_must_name_the_sender(subject: str) -> None:
    exc = reject(encode(beat_body()), subject)
    assert exc.reason == "subject" and subject in exc.detail


def test_a_namespaced_subject_is_accepted() -> None:
    beat = Heartbeat.from_payload(encode(beat_body()), "t1.agents.heartbeat.coder.coder-0")
    assert beat.worker_id == "coder-0"


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "json"), (b"not json", "json"), (b"{", "json"), (b"[1, 2]", "type"), (b'"t"', "type")],
)
def test_not_a_json_object(data: bytes, reason: str) -> None:
    assert reject(data).reason == reason
