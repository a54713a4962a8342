"""Rejections: counts per (kind, reason), logging once a minute per key, the Prometheus family."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from foundry.contracts import Heartbeat, MessageRejected
from foundry.rejections import LOG_EVERY, Rejections


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def rejections(clock: Clock) -> Rejections:
    return Rejections(clock=clock)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "foundry.rejections"]


def test_counts_per_kind_and_reason(rejections: Rejections) -> None:
    rejections.record("heartbeat", "type", "pid must be a number")
    rejections.record("heartbeat", "type", "pid must be a number")
    rejections.record("heartbeat", "range", "pid=0")
    rejections.record("task_event", "type", "at")
    assert rejections.counts == {
        ("heartbeat", "type"): 2,
        ("heartbeat", "range"): 1,
        ("task_event", "type"): 1,
    }
    assert rejections.total() == 4
    assert rejections.total("heartbeat") == 3
    assert rejections.total("advisory") == 0


def test_logs_once_a_minute_per_key(
    rejections: Rejections, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "foundry.rejections")
    # Given a first rejection, it is logged with its detail and source
    rejections.record("heartbeat", "type", "first detail", source="agents.heartbeat.x.y")
    assert len(warnings(caplog)) == 1
    assert "first detail" in warnings(caplog)[0]
    assert "from agents.heartbeat.x.y" in warnings(caplog)[0]
    # When the same key repeats within the minute, it is counted but not logged
    clock.now += LOG_EVERY - 0.001
    rejections.record("heartbeat", "type", "second detail")
    assert len(warnings(caplog)) == 1
    # but another key is logged at once
    rejections.record("heartbeat", "range", "other key")
    assert len(warnings(caplog)) == 2
    # Then a minute after the first log of the key, it is logged again with the count so far
    clock.now += 0.001
    rejections.record("heartbeat", "type", "third detail")
    assert len(warnings(caplog)) == 3
    assert "third detail" in warnings(caplog)[-1] and "[3 heartbeat/type" in warnings(caplog)[-1]
    assert rejections.counts[("heartbeat", "type")] == 3


def test_parse_returns_the_value_or_none_after_counting(rejections: Rejections) -> None:
    assert rejections.parse(lambda: 5) == 5
    assert rejections.total() == 0

    def bad() -> Heartbeat:
        return Heartbeat.from_payload(b'{"worker_id": 7}')

    assert rejections.parse(bad, source="subject") is None
    assert rejections.counts == {("heartbeat", "type"): 1}


def test_parse_lets_other_errors_through(rejections: Rejections) -> None:
    def broken() -> int:
        raise KeyError("a bug, not a bad message")

    with pytest.raises(KeyError):
        rejections.parse(broken)
    assert rejections.total() == 0


def test_rejected_takes_the_exception(rejections: Rejections) -> None:
    rejections.rejected(MessageRejected("control", "json", "not JSON"))
    assert rejections.counts == {("control", "json"): 1}


def test_prometheus_family(rejections: Rejections) -> None:
    registry = CollectorRegistry()
    registry.register(rejections)
    text = generate_latest(registry).decode()
    assert "# TYPE foundry_messages_rejected_total counter" in text
    assert "foundry_messages_rejected_total{" not in text  # nothing rejected: no samples
    rejections.record("heartbeat", "type", "d")
    rejections.record("heartbeat", "type", "d")
    rejections.record("advisory", "range", "d")
    lines = [
        line
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("foundry_messages_rejected_total")
    ]
    assert lines == [
        'foundry_messages_rejected_total{kind="advisory",reason="range"} 1.0',
        'foundry_messages_rejected_total{kind="heartbeat",reason="type"} 2.0',
    ]
