"""Replay ids keep their lineage and stay valid task ids, however long the original."""

from __future__ import annotations

import pytest

from foundry import codec
from foundry.contracts import TASK_ID_RE, MessageRejected, TaskEvent, TaskStatus
from foundry.replays import STEM_MAX, replay_id, replay_stem
from gateway.replay import replayed_payload


def test_a_replay_id_names_its_original_and_a_replay_of_a_replay_does_not_grow() -> None:
    assert replay_id(replay_stem("build-7"), 1) == "build-7.replay-1"
    # a replay of a replay shares the original's stem: build-7.replay-2, not ….replay-1.replay-1
    assert replay_stem("build-7.replay-1") == "build-7"
    assert replay_stem("seq-12") == "seq-12"
    assert replay_stem("a.replay-x") == "a.replay-x"  # not a replay number


@pytest.mark.parametrize("length", [1, STEM_MAX, STEM_MAX + 1, 120, 128])
def test_every_replay_id_is_a_valid_task_id(length: int) -> None:
    original = "t" * length
    assert TASK_ID_RE.fullmatch(original)
    stem = replay_stem(original)
    assert len(stem) <= STEM_MAX and stem[0] == "t"
    for n in (1, 42, 999_999_999):
        assert TASK_ID_RE.fullmatch(replay_id(stem, n)), (length, n)
    # the cut stem is stable: replaying its own replay keeps the same stem (one counter)
    assert replay_stem(replay_id(stem, 3)) == stem
    if length > STEM_MAX:  # two long ids that differ only at the end get different stems
        assert replay_stem(original[:-1] + "u") != stem


def test_out_of_range_numbers_are_refused() -> None:
    for n in (0, -1, 10**9):
        with pytest.raises(ValueError, match="no replay id"):
            replay_id("x", n)


def test_a_json_payload_gets_the_new_id_and_time_and_text_goes_as_it_was() -> None:
    body = codec.loads(replayed_payload('{"task_id": "a", "input": {"k": 1}}', "a.replay-1", 5.0))
    assert body == {"task_id": "a.replay-1", "input": {"k": 1}, "submitted_at": 5.0}
    assert replayed_payload("review the haiku", "b.replay-1", 5.0) == b"review the haiku"
    assert replayed_payload("[1, 2]", "c.replay-1", 5.0) == b"[1, 2]"


def test_a_queued_event_carries_replay_of_only_when_set() -> None:
    plain = TaskEvent(TaskStatus.QUEUED, "a", "coder", at=1e9)
    assert "replay_of" not in plain.to_json()
    replayed = TaskEvent(TaskStatus.QUEUED, "a.replay-1", "coder", at=1e9, replay_of="a")
    assert TaskEvent.from_payload(replayed.to_payload()).replay_of == "a"
    forged = codec.loads(replayed.to_payload()) | {"replay_of": "a b"}
    with pytest.raises(MessageRejected) as info:
        TaskEvent.from_payload(codec.dumps(forged))
    assert info.value.reason == "pattern"
