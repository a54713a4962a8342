"""The healer's advisory buffer: bounded in count and age, emptied by an election; and the
monitor's split of the heartbeat exporter into cluster and host series."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.aio.client import Client as NATS

from foundry.contracts import Heartbeat, MaxDeliveriesAdvisory, WorkerState
from foundry.names import Names
from foundry.store import TaskStore
from healer.advisories import KEEP_MAX, Advisories
from monitor.exporter import ClusterExporter
from monitor.leader import Collected, LeaderOnly


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def advisory(seq: int) -> MaxDeliveriesAdvisory:
    return MaxDeliveriesAdvisory("AGENT_TASKS", "workers-coder", seq, 3)


class Recorded(Advisories):
    """The buffer as it is, with acting recorded instead of asking the servers."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(cast(NATS, None), cast(TaskStore, None), Names(), 3, _never,
                         lambda: False, keep_seconds=6.0, clock=clock)  # fmt: skip
        self.acted: list[int] = []

    async def act(self, advisory: MaxDeliveriesAdvisory, kept: bool = False) -> bool:
        self.acted.append(advisory.stream_seq)
        return True


async def _never(*_: Any) -> str | None:
    raise AssertionError("not called here")


def test_the_buffer_keeps_the_newest_within_its_age_and_count() -> None:
    clock = Clock()
    kept = Recorded(clock)
    for seq in range(KEEP_MAX + 5):
        kept.keep(advisory(seq))
    assert len(kept.kept) == KEEP_MAX and kept.kept[0][1].stream_seq == 5
    clock.now += 7.0  # older than keep_seconds: forgotten
    kept.keep(advisory(99_999))
    assert [a.stream_seq for _, a in kept.kept] == [99_999]


def test_an_election_acts_on_what_was_kept_once() -> None:
    clock = Clock()
    kept = Recorded(clock)
    kept.keep(advisory(1))
    clock.now += 2.0
    kept.keep(advisory(2))
    clock.now += 5.0  # the first is now 7 s old, the second 5 s
    assert asyncio.run(kept.on_elected()) == 1
    assert kept.acted == [2] and not kept.kept
    assert asyncio.run(kept.on_elected()) == 0 and kept.acted == [2]


def beat(worker: str, host: str) -> Heartbeat:
    return Heartbeat(worker, "coder", host, 100, None, WorkerState.IDLE)


def test_the_exporter_splits_cluster_series_from_its_hosts() -> None:
    exporter = ClusterExporter({"coder": 1}, silence_timeout=60, host="host-a")
    exporter.observe(beat("coder-0@host-a", "host-a"))
    exporter.observe(beat("coder-0@host-b", "host-b"))
    cluster = {m.name: m for m in exporter.cluster_metrics()}
    idle = [s for s in cluster["foundry_workers"].samples if s.labels["state"] == "idle"]
    assert [s.value for s in idle] == [2]  # every host's workers
    host = {m.name: m for m in exporter.host_metrics()}
    assert [s.labels["worker"] for s in host["foundry_worker_up"].samples] == ["coder-0@host-a"]
    assert "foundry_workers" not in host and "foundry_worker_up" not in cluster
    leading = [False]
    only = LeaderOnly(lambda: leading[0], Collected(exporter.cluster_metrics))
    assert list(only.collect()) == []
    leading[0] = True
    assert {m.name for m in only.collect()} == set(cluster)
