"""A leader takeover loses no max-deliveries advisory: an advisory nats-server sends while the
leading healer is dead but still holds the lease is kept by the other healer, which
dead-letters the task once it leads, and an advisory the old leader already handled is not
handled twice.

Two hosts are two healers with their own FOUNDRY_HOST_ID and data dir on the suite's one
NATS and one Redis (loopback).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.contracts import MSG_ID_HEADER, DeadLetter, DeadLetterAction
from foundry.provision import provision
from foundry.settings import Settings
from foundry.store import TaskStore
from healer.deadletter import DeadLetters
from tests.cluster import start_healer, watch
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_hosts import HOSTS, all_running, cluster_streams, host_settings, leaders


async def dead(store: TaskStore, task_id: str) -> bool:
    record = await store.get(task_id)
    return record is not None and record.status == "dead"


async def submit(nc: NATS, store: TaskStore, settings: Settings, task_id: str) -> int:
    """Queue a task that always asks to be retried; its stream sequence."""
    await store.queue(task_id, "coder")
    body = codec.dumps({"description": "never ready"})
    ack = await nc.jetstream().publish(
        settings.names.tasks("coder"), body, headers={MSG_ID_HEADER: task_id}
    )
    return int(ack.seq)


async def test_an_advisory_sent_during_a_takeover_is_dead_lettered_once(
    make_settings: Any, nc: NATS, redis: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given two hosts' healers, host-a leading, and a type whose tasks always ask for a retry
    # (two deliveries, then nats-server sends a max-deliveries advisory)
    base = make_settings(
        fleet={"coder": 1}, handlers={"coder": "tests.handlers:retry_always"}, max_deliver=2
    )
    store = TaskStore(redis, base.names, base.result_ttl)
    host_a, host_b = (host_settings(base, host, tmp_path) for host in HOSTS)
    advisories: dict[int, float] = {}  # stream seq → when the advisory arrived (wall clock)

    async def on_advisory(msg: Msg) -> None:
        advisories.setdefault(int(codec.loads(msg.data)["stream_seq"]), time.time())

    sub = await nc.subscribe(base.names.max_deliveries_advisory(), cb=on_advisory)
    async with cluster_streams(base, procs), watch(nc, base) as events:
        healer_a = start_healer(procs, host_a)
        await eventually(lambda: _is(leaders(nc, base), ["host-a"]), 30)
        start_healer(procs, host_b)
        await all_running(nc, base, HOSTS)
        # When one task exhausts its deliveries while host-a leads (host-b keeps the advisory)
        first = await submit(nc, store, base, "md-1")
        await eventually(lambda: dead(store, "md-1"), 20)
        # and host-a's healer is killed, and a second task exhausts its deliveries at once
        os.kill(healer_a.pid, signal.SIGKILL)
        killed = time.monotonic()
        second = await submit(nc, store, base, "md-2")
        await eventually(lambda: second in advisories, 10)
        # Then host-b, once it leads, dead-letters the second task from what it kept
        await eventually(lambda: dead(store, "md-2"), base.lease_ttl + 20)
        took = time.monotonic() - killed
        [elected] = events.of("leader", duty="healer", host="host-b")
        assert advisories[second] < elected["at"], "the advisory came after the takeover"
        assert elected["previous_holder"] == f"host-a-{healer_a.pid}", elected
        # exactly once each: the first by host-a, the second by host-b, nothing twice (host-b
        # acts on what it kept in order, so a second letter of md-1 would have come first)
        await eventually(lambda: events.of("dead_letter", task_id="md-2"), 10)
        letters = [(e["task_id"], e["host"]) for e in events.of("dead_letter")]
        assert sorted(letters) == [("md-1", "host-a"), ("md-2", "host-b")], letters
        info = await nc.jetstream().stream_info(
            base.names.dead_stream, subjects_filter=base.names.dead("coder")
        )
        assert info.state.messages == 2, info.state
        assert first in advisories
        gap = elected["at"] - advisories[second]
        print(f"advisory {gap:.2f}s before host-b led; md-2 dead {took:.2f}s after the kill "
              f"(FOUNDRY_LEASE_TTL={base.lease_ttl}s)")  # fmt: skip
    await sub.unsubscribe()


async def test_a_task_dead_lettered_half_way_is_finished_without_a_second_letter(
    make_settings: Any, nc: NATS, redis: Any
) -> None:
    settings = make_settings(fleet={"coder": 1})
    names, js = settings.names, nc.jetstream()
    await provision(js, settings)
    store = TaskStore(redis, names, settings.result_ttl)
    emitted: list[Any] = []

    async def emit(action: Any, /, **fields: Any) -> None:
        emitted.append((action, fields))

    deadletters = DeadLetters(nc, store, names, poison_kills=3, max_deliver=2, emit=emit)
    await store.queue("half-1", "coder")
    seq = (await js.publish(names.tasks("coder"), b"job", headers={MSG_ID_HEADER: "half-1"})).seq
    # Given a leader that copied the task to AGENT_DEAD and stored it dead, then died before
    # removing it from the task stream
    letter = DeadLetter("half-1", "coder", seq, DeadLetterAction.MAX_DELIVER, "r", "job", [])
    await js.publish(
        names.dead("coder"), letter.to_payload(), headers={MSG_ID_HEADER: "dead-half-1"}
    )
    await store.mark_dead("half-1", "coder", {"reason": "r"})
    # When the next leader acts on the same advisory
    done = await deadletters.dead_letter("coder", seq, DeadLetterAction.MAX_DELIVER, "r", [])
    # Then it finishes the removal, writes no second letter and announces nothing again
    assert done is None and emitted == []
    info = await js.stream_info(names.dead_stream, subjects_filter=names.dead("coder"))
    assert info.state.messages == 1, info.state
    assert (await js.stream_info(names.tasks_stream)).state.messages == 0
    # and a task seen for the first time is dead-lettered and announced as before
    await store.queue("half-2", "coder")
    seq = (await js.publish(names.tasks("coder"), b"job", headers={MSG_ID_HEADER: "half-2"})).seq
    done = await deadletters.dead_letter("coder", seq, DeadLetterAction.MAX_DELIVER, "r", [])
    assert done == "half-2" and [a for a, _ in emitted] == ["dead_letter"]
    assert await dead(store, "half-2")


async def _is(value: Any, expected: Any) -> bool:
    return bool(await value == expected)
