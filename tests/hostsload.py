"""What tests of several namespace hosts watch and feed: heal events and heartbeats as one
host hears them, a steady stream of tasks, and what became of those tasks.

Everything here runs on one host's event loop (:meth:`tests.netns.Host.run`) and connects
to that host's own nats-server node only, so it keeps hearing the cluster while other
hosts are cut off or lost. Tasks use the ``tests.handlers:record`` handler: every run
leaves a mark file, so runs (and duplicates) are counted across processes and hosts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.connect import connect_nats, connect_redis
from foundry.settings import Settings
from foundry.store import TaskRecord, TaskStore
from tests.steadyload import LoadReport, publish_retrying

UNSETTLED = ("relaunch", "kill_silent")


@dataclass
class Beat:
    """A heartbeat as received: its body and the wall-clock time it arrived."""

    at: float
    body: dict[str, Any]


class Observer:
    """Heal events and heartbeats heard on one node; the cluster's healers' status replies."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.heal: list[dict[str, Any]] = []
        self.beats: list[Beat] = []
        self.nc: NATS | None = None

    async def open(self) -> None:
        self.nc = await connect_nats(self.settings, "observer")
        names = self.settings.names
        await self.nc.subscribe(names.heal_event(">"), cb=self._on_heal)
        await self.nc.subscribe(names.heartbeat(), cb=self._on_beat)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def _on_heal(self, msg: Msg) -> None:
        self.heal.append(codec.loads(msg.data))

    async def _on_beat(self, msg: Msg) -> None:
        self.beats.append(Beat(time.time(), codec.loads(msg.data)))

    def events(self, *actions: str, since: float = 0.0) -> list[dict[str, Any]]:
        kinds = {f"heal.{a}" for a in actions}
        return [e for e in self.heal if e["kind"] in kinds and e["at"] >= since]

    def last_beats(self, host: str) -> dict[str, Beat]:
        """Each of ``host``'s workers' latest beat heard."""
        last: dict[str, Beat] = {}
        for beat in self.beats:
            if beat.body["host"] == host:
                last[beat.body["worker_id"]] = beat
        return last

    def in_flight(self, host: str) -> list[str]:
        """The task ids ``host``'s workers listed in their latest beats."""
        return [e["task_id"] for b in self.last_beats(host).values() for e in b.body["in_flight"]]

    def beating_since(self, host: str, since: float, pids: set[int]) -> bool:
        """Whether every one of ``pids`` on ``host`` was heard after ``since``."""
        heard = {b.body["pid"] for b in self.last_beats(host).values() if b.at > since}
        return pids <= heard

    async def status(self, within: float = 0.6) -> dict[str, dict[str, Any]]:
        """Host id → that host's healer's status reply (every healer answers one request)."""
        assert self.nc is not None
        inbox = self.nc.new_inbox()
        replies: dict[str, dict[str, Any]] = {}

        async def take(msg: Msg) -> None:
            reply = codec.loads(msg.data)
            replies[reply["host_id"]] = reply

        sub = await self.nc.subscribe(inbox, cb=take)
        await self.nc.publish(self.settings.names.control("status"), b"{}", reply=inbox)
        await asyncio.sleep(within)
        await sub.unsubscribe()
        return replies


def workers_of(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["slot"]: s for s in reply["slots"] if s["kind"] == "worker"}


@dataclass
class Loader:
    """Publishes ``record`` tasks at ``rate`` per second until stopped; ``acked`` maps each
    task the stream stored to when it was published."""

    settings: Settings
    marks: Path
    rate: float
    sleep: float
    acked: dict[str, float] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    not_acked: list[str] = field(default_factory=list)
    took: dict[str, float] = field(default_factory=dict)  # seconds until stored
    report: LoadReport = field(default_factory=lambda: LoadReport(0))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.marks.mkdir(parents=True, exist_ok=True)
        self._stop = asyncio.Event()
        self._runner = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._runner is not None:
            await asyncio.wait_for(self._runner, 40)

    async def _run(self) -> None:
        nc = await connect_nats(self.settings, "load")
        subject = self.settings.names.tasks("echo")
        pending: set[asyncio.Task[None]] = set()

        async def one(task_id: str) -> None:
            body = codec.dumps(
                {"description": "load", "input": {"sleep": self.sleep, "marks": str(self.marks)}}
            )
            sent = self.started[task_id] = time.time()
            if await publish_retrying(nc, subject, task_id, body, 30.0, self.report):
                self.acked[task_id] = sent
                self.took[task_id] = time.time() - sent
            else:
                self.not_acked.append(task_id)

        try:
            began, n = time.monotonic(), 0
            while not self._stop.is_set():
                task = asyncio.create_task(one(f"ld-{n}"))
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                with contextlib.suppress(TimeoutError):
                    wait = max(0.0, began + n / self.rate - time.monotonic())
                    await asyncio.wait_for(self._stop.wait(), wait)
            if pending:
                await asyncio.wait(pending, timeout=35)
        finally:
            await nc.close()

    async def published(self, since: float, until: float) -> list[str]:
        """The tasks whose publish began in [since, until) and was stored, once every such
        publish is stored or has given up (each retries for up to 30 s)."""
        window = [t for t, at in list(self.started.items()) if since <= at < until]
        deadline = time.monotonic() + 40
        while any(t not in self.acked and t not in self.not_acked for t in window):
            assert time.monotonic() < deadline, "publishes neither stored nor given up"
            await asyncio.sleep(0.2)
        return [t for t in window if t in self.acked]

    def slowest(self, ids: list[str]) -> float:
        """The longest any of ``ids`` took to be stored (retries included)."""
        return round(max((self.took[t] for t in ids), default=0.0), 2)

    def runs(self) -> Counter[str]:
        """Task id → how many times a handler ran it (one mark file per run)."""
        return Counter(p.name.partition(".")[0] for p in self.marks.iterdir())


async def records(settings: Settings, ids: list[str]) -> dict[str, TaskRecord | None]:
    redis = await connect_redis(settings)
    try:
        store = TaskStore(redis, settings.names, settings.result_ttl)
        return {task_id: await store.get(task_id) for task_id in ids}
    finally:
        await redis.aclose()


async def settled(settings: Settings, ids: list[str], timeout: float) -> dict[str, TaskRecord]:
    """Wait (bounded) until every one of ``ids`` is completed; the records of those that are
    not, if any, are what was lost."""
    deadline = time.monotonic() + timeout
    waiting = list(ids)
    done: dict[str, TaskRecord] = {}
    while True:
        found = await records(settings, waiting)
        for task_id, record in found.items():
            if record is not None and record.status == "completed":
                done[task_id] = record
        waiting = [t for t in waiting if t not in done]
        if not waiting or time.monotonic() > deadline:
            return done
        await asyncio.sleep(0.5)
