"""LiveTable: bounded, one forgetting rule, stopped forgotten at once, incarnations retired."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import Heartbeat, WorkerState
from foundry.livetable import LiveTable, Seen, forget_after_for
from foundry.rejections import Rejections

SILENCE = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def beat(worker_id: str = "coder-0", **changes: Any) -> Heartbeat:
    fields: dict[str, Any] = {
        "worker_id": worker_id,
        "agent_type": "coder",
        "host": "h",
        "pid": 100,
        "slot": 0,
        "state": WorkerState.IDLE,
        "started_at": 1.7e9,
    }
    fields.update(changes)
    return Heartbeat(**fields)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def retired() -> list[Seen]:
    return []


@pytest.fixture
def rejections() -> Rejections:
    return Rejections(clock=lambda: 0.0)


@pytest.fixture
def table(clock: Clock, retired: list[Seen], rejections: Rejections) -> LiveTable:
    return LiveTable(
        SILENCE, max_workers=3, clock=clock, on_retire=retired.append, rejections=rejections
    )


@pytest.mark.parametrize(("silence", "forget"), [(0.1, 60.0), (3.0, 60.0), (5.0, 100.0)])
def test_forget_after_is_twenty_timeouts_at_least_a_minute(silence: float, forget: float) -> None:
    assert forget_after_for(silence) == forget
    assert LiveTable(silence).forget_after == forget


def test_latest_beat_is_kept(table: LiveTable, clock: Clock) -> None:
    table.observe(beat(processed=1))
    clock.now += 1
    seen = table.observe(beat(processed=2))
    assert seen is not None and seen.received == clock.now
    row = table.get("coder-0")
    assert row is not None and row.beat.processed == 2
    assert len(table) == 1 and "coder-0" in table and "coder-1" not in table


def test_silent_versus_live(table: LiveTable, clock: Clock) -> None:
    seen = table.observe(beat())
    assert seen is not None
    clock.now += SILENCE
    assert table.age(seen) == SILENCE and not table.silent(seen)
    clock.now += 0.01
    assert table.silent(seen)
    # still listed while silent: forgetting takes forget_after
    assert [s.beat.worker_id for s in table.live()] == ["coder-0"]


def test_forgotten_after_forget_after(table: LiveTable, clock: Clock, retired: list[Seen]) -> None:
    table.observe(beat("coder-0"))
    clock.now += 30
    table.observe(beat("coder-1"))
    clock.now += table.forget_after - 30
    assert len(table.live()) == 2  # coder-0 is exactly forget_after old: kept
    clock.now += 0.01
    assert [s.beat.worker_id for s in table.live()] == ["coder-1"]
    assert [s.beat.worker_id for s in retired] == ["coder-0"]
    assert table.get("coder-0") is None


def test_live_is_sorted_by_worker_id(table: LiveTable) -> None:
    for wid in ("coder-2", "coder-0", "coder-1"):
        table.observe(beat(wid))
    assert [s.beat.worker_id for s in table.live()] == ["coder-0", "coder-1", "coder-2"]


def test_stopped_is_forgotten_at_once(table: LiveTable, retired: list[Seen]) -> None:
    table.observe(beat())
    seen = table.observe(beat(state=WorkerState.STOPPED))
    assert seen is not None and seen.beat.state is WorkerState.STOPPED
    assert "coder-0" not in table and len(table) == 0
    assert [s.beat.state for s in retired] == [WorkerState.STOPPED]


def test_a_new_incarnation_retires_the_old(
    table: LiveTable, clock: Clock, retired: list[Seen]
) -> None:
    table.observe(beat(pid=100))
    table.observe(beat(pid=100, processed=5))  # same process: nothing retired
    assert retired == []
    clock.now += 1
    table.observe(beat(pid=200, started_at=1.7e9 + 10))
    assert [(s.beat.pid, s.beat.processed) for s in retired] == [(100, 5)]
    row = table.get("coder-0")
    assert row is not None and row.beat.pid == 200 and len(table) == 1


def test_same_pid_with_another_start_is_another_incarnation(
    table: LiveTable, retired: list[Seen]
) -> None:
    table.observe(beat(pid=100, started_at=1.7e9))
    table.observe(beat(pid=100, started_at=1.7e9 + 60))  # pid reused after a restart
    assert [s.incarnation for s in retired] == [("coder-0", 100, 1.7e9)]


def test_bounded_new_workers_refused_and_counted(
    table: LiveTable, rejections: Rejections, clock: Clock
) -> None:
    for i in range(3):
        assert table.observe(beat(f"coder-{i}")) is not None
    assert table.observe(beat("coder-3")) is None
    assert "coder-3" not in table and len(table) == 3
    assert rejections.counts == {("heartbeat", "table_full"): 1}
    # a listed worker still gets through when the table is full
    assert table.observe(beat("coder-1", processed=9)) is not None


def test_a_full_table_forgets_the_long_silent_to_make_room(
    table: LiveTable, clock: Clock, retired: list[Seen], rejections: Rejections
) -> None:
    table.observe(beat("coder-0"))
    clock.now += table.forget_after
    table.observe(beat("coder-1"))
    table.observe(beat("coder-2"))
    clock.now += 1
    assert table.observe(beat("coder-3")) is not None
    assert sorted(s.beat.worker_id for s in table.live()) == ["coder-1", "coder-2", "coder-3"]
    assert [s.beat.worker_id for s in retired] == ["coder-0"]
    assert rejections.total() == 0


def test_without_on_retire_nothing_breaks(clock: Clock) -> None:
    table = LiveTable(SILENCE, clock=clock)
    table.observe(beat(pid=1))
    table.observe(beat(pid=2))
    table.observe(beat(pid=2, state=WorkerState.STOPPED))
    assert len(table) == 0


def test_a_stopped_beat_of_an_unlisted_worker_is_retired_with_its_counters(
    table: LiveTable, retired: list[Seen]
) -> None:
    # a worker that started and stopped between two beats still hands over its totals
    table.observe(beat("coder-9", processed=4, state=WorkerState.STOPPED))
    assert [(s.beat.worker_id, s.beat.processed) for s in retired] == [("coder-9", 4)]
    assert len(table) == 0
