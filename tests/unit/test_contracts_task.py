"""parse_task: plain text, JSON objects, and every way a payload is refused with its task id."""

from __future__ import annotations

import time

import pytest

from foundry.contracts import MSG_ID_HEADER, Task, parse_task
from foundry.errors import MalformedTask
from tests.unit.samples import NOW, encode

LIMIT = 1024
HEADERS = {MSG_ID_HEADER: "hdr-1"}


def parse(data: bytes, headers: dict[str, str] | None = None) -> Task:
    return parse_task(data, headers, "coder", 7, LIMIT)


def malformed(data: bytes, headers: dict[str, str] | None = None) -> MalformedTask:
    with pytest.raises(MalformedTask) as caught:
        parse(data, headers)
    assert str(caught.value) == caught.value.reason
    return caught.value


def test_plain_text_is_the_description() -> None:
    assert parse(b"  write a parser\n") == Task("seq-7", "coder", "write a parser")
    assert parse(b"write a parser", HEADERS).task_id == "hdr-1"


def test_json_object_with_every_field() -> None:
    body = {"task_id": "t-1", "description": "d", "input": {"n": [1, 2]}, "submitted_at": NOW}
    task = parse(encode(body))
    assert task == Task("t-1", "coder", "d", {"n": [1, 2]}, NOW)
    assert isinstance(task.submitted_at, float)
    assert parse(task.to_payload()) == task


def test_input_alone_is_enough() -> None:
    task = parse(b'{"input": [1]}')
    assert (task.task_id, task.description, task.input) == ("seq-7", "", [1])


def test_the_header_id_wins_and_a_bad_id_falls_back() -> None:
    assert parse(b'{"task_id": "t-1", "description": "d"}', HEADERS).task_id == "hdr-1"
    assert parse(b'{"task_id": "t-1", "description": "d"}', {MSG_ID_HEADER: "a b"}).task_id == (
        "t-1"
    )
    assert parse(b'{"task_id": "bad id!", "description": "d"}').task_id == "seq-7"
    assert parse(b'{"task_id": 12, "description": "d"}').task_id == "seq-7"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b'{"description": ', "does not parse"),
        (b'{"description": "d", "submitted_at": NaN}', "does not parse"),
        (b'{"description": "d", "submitted_at": 1e400}', "does not parse"),
        (b"[1, 2]", "must be an object"),
        (b"\xff\xfe task", "not valid UTF-8"),
        (b"   \n ", "payload is empty"),
        (b"x" * (LIMIT + 1), f"over the {LIMIT} limit"),
    ],
)
def test_unreadable_payloads_fail_under_the_fallback_id(data: bytes, words: str) -> None:
    # the payload's own task_id cannot be read, so the header's id (else seq-N) names it
    assert words in malformed(data).reason
    assert malformed(data).task_id == "seq-7"
    assert malformed(data, HEADERS).task_id == "hdr-1"


def test_oversize_is_counted_in_bytes_not_characters() -> None:
    text = "é" * (LIMIT // 2 + 1)  # fewer characters than the limit, more bytes
    assert "limit" in malformed(text.encode()).reason


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"task_id": "t-1", "description": 5}, "'description' must be a string"),
        ({"task_id": "t-1"}, "neither 'description' nor 'input'"),
        ({"task_id": "t-1", "description": "", "input": None}, "neither"),
        ({"task_id": "t-1", "description": "d", "submitted_at": -1.7e308}, "plausible"),
        ({"task_id": "t-1", "description": "d", "submitted_at": 1.7e308}, "plausible"),
        ({"task_id": "t-1", "description": "d", "submitted_at": 0}, "plausible"),
        ({"task_id": "t-1", "description": "d", "submitted_at": 946684799.0}, "plausible"),
        ({"task_id": "t-1", "description": "d", "submitted_at": "2024-01-01"}, "Unix time"),
        ({"task_id": "t-1", "description": "d", "submitted_at": True}, "Unix time"),
        ({"task_id": "t-1", "description": "d", "submitted_at": [NOW]}, "Unix time"),
    ],
)
def test_bad_fields_fail_under_the_payload_id(body: dict[str, object], words: str) -> None:
    exc = malformed(encode(body))
    assert words in exc.reason and exc.task_id == "t-1"


def test_submitted_at_in_the_far_future() -> None:
    future = time.time() + 2 * 86400
    exc = malformed(encode({"task_id": "t-1", "description": "d", "submitted_at": future}))
    assert exc.task_id == "t-1" and "not in the future" in exc.reason
    # within the allowed skew of a day it is accepted
    soon = time.time() + 3600
    assert parse(encode({"description": "d", "submitted_at": soon})).submitted_at == soon


def test_a_payload_at_the_limit_is_read() -> None:
    data = b"x" * LIMIT
    assert parse(data).description == "x" * LIMIT
