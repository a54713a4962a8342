"""HostSample, ControlRequest / ControlReply and WorkerControl validation and round trips."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import (
    ControlReply,
    ControlRequest,
    ControlVerb,
    DiskSample,
    HostSample,
    MessageRejected,
    ProcessSample,
    WorkerControl,
)
from foundry.contracts.control import MAX_CONTROL_BYTES
from tests.unit.samples import NOW, encode


def sample() -> HostSample:
    return HostSample(
        host="host-1", at=NOW, cpu_percent=55.5, load1=1.5, memory_percent=40.0,
        swap_percent=0.0, disks=[DiskSample("/data", 70.0, 10.0, 2**30)],
        nats_ok=True, nats_rtt_seconds=0.001, redis_ok=False, redis_rtt_seconds=None,
        processes=[ProcessSample("coder-0", "coder", 4242, 10**8, 33.0)],
    )  # fmt: skip


def sample_body(**changes: Any) -> dict[str, Any]:
    body = sample().to_json()
    body.update(changes)
    return body


def process(**changes: Any) -> dict[str, Any]:
    row = {"worker_id": "w", "agent_type": "coder", "pid": 1, "rss_bytes": 1, "cpu_percent": 1}
    return {**row, **changes}


def rejected(kind: str, parse: Any, *args: Any) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        parse(*args)
    assert caught.value.kind == kind
    return caught.value


def test_host_sample_round_trip() -> None:
    assert HostSample.from_payload(sample().to_payload()) == sample()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"host": "a b"}, "pattern"),
        ({"cpu_percent": 100.5}, "range"),
        ({"memory_percent": -1}, "range"),
        ({"load1": "high"}, "type"),
        ({"nats_ok": None}, "missing"),
        ({"redis_ok": "true"}, "type"),
        ({"nats_rtt_seconds": 1e7}, "range"),
        ({"disks": [{"path": "/", "percent": 101, "inodes_percent": 1, "free_bytes": 1}]}, "range"),
        ({"disks": ["/"]}, "type"),
        ({"disks": [{}] * 65}, "size"),
        ({"processes": [process(pid=0)]}, "range"),
        ({"processes": [process(worker_id="a.b")]}, "pattern"),
        ({"processes": [process(cpu_percent=1e6)]}, "range"),
    ],
)
def test_host_sample_rejections(changes: dict[str, Any], reason: str) -> None:
    exc = rejected("host_sample", HostSample.from_payload, encode(sample_body(**changes)))
    assert exc.reason == reason


def test_control_request_worker_id() -> None:
    req = ControlRequest.from_payload(ControlVerb.RELEASE, b'{"worker_id": "coder-0"}')
    assert req == ControlRequest(ControlVerb.RELEASE, "coder-0")
    assert ControlRequest.from_payload(req.verb, req.to_payload()) == req
    # verbs without a slot take an empty body, or none at all
    assert ControlRequest.from_payload(ControlVerb.STATUS, b"  ") == ControlRequest(
        ControlVerb.STATUS
    )
    assert ControlRequest(ControlVerb.PING).to_payload() == b"{}"


@pytest.mark.parametrize(
    ("verb", "data", "reason"),
    [
        (ControlVerb.RELEASE, b"", "missing"),
        (ControlVerb.RELEASE, b"{}", "missing"),
        (ControlVerb.RELEASE, b'{"worker_id": "a.b"}', "pattern"),
        (ControlVerb.RELEASE, b'{"worker_id": 3}', "type"),
        (ControlVerb.STATUS, b"[1]", "type"),
        (ControlVerb.HEAL, b"{", "json"),
        (ControlVerb.PING, b"{" + b" " * MAX_CONTROL_BYTES + b"}", "size"),
    ],
)
def test_control_request_rejections(verb: ControlVerb, data: bytes, reason: str) -> None:
    assert rejected("control", ControlRequest.from_payload, verb, data).reason == reason


def test_control_reply_success_and_error_round_trips() -> None:
    ok = ControlReply({"slots": [1, 2]})
    assert ok.ok and ControlReply.from_payload(ok.to_payload()) == ok
    bad = ControlReply.failure("not_found", "no slot 'x'")
    back = ControlReply.from_payload(bad.to_payload())
    assert not back.ok and (back.code, back.error) == ("not_found", "no slot 'x'")


@pytest.mark.parametrize("code", [None, "teapot", 404, ["bad_request"]])
def test_an_error_reply_with_an_unknown_code_is_internal(code: Any) -> None:
    reply = ControlReply.from_payload(encode({"error": "went wrong", "code": code}))
    assert (reply.ok, reply.code, reply.error) == (False, "internal", "went wrong")


def test_control_reply_rejections() -> None:
    assert rejected("control", ControlReply.from_payload, b'{"error": 5}').reason == "type"
    assert rejected("control", ControlReply.from_payload, b"[]").reason == "type"
    with pytest.raises(AssertionError):
        ControlReply.failure("teapot", "no such code")


@pytest.mark.parametrize(("level", "parsed"), [(1, 1), (8, 8), (64, 64), (None, None)])
def test_worker_control_accepts_1_to_max_and_null(level: int | None, parsed: int | None) -> None:
    control = WorkerControl.from_payload(encode({"concurrency": level}), max_concurrency=64)
    assert control.concurrency == parsed
    assert WorkerControl.from_payload(control.to_payload(), 64) == control


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"concurrency": 0}', "range"),
        (b'{"concurrency": -4}', "range"),
        (b'{"concurrency": 65}', "range"),
        (b'{"concurrency": true}', "type"),
        (b'{"concurrency": 2.5}', "type"),
        (b'{"concurrency": "4"}', "type"),
        (b"{}", "missing"),
        (b"4", "type"),
    ],
)
def test_worker_control_rejections(data: bytes, reason: str) -> None:
    exc = rejected("worker_control", WorkerControl.from_payload, data, 64)
    assert exc.reason == reason
