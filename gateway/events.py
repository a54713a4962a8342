"""``GET /api/cluster/events``: task lifecycle and heal events as Server-Sent Events.

One reader per gateway (:class:`EventHub`) follows the AGENT_EVENTS stream with
a short-lived pull consumer while anyone watches (and a short linger after),
parses each event with its contract and hands the frame to every client whose
filters match; each frame's ``id`` is the event's stream sequence. A client
that reconnects with ``Last-Event-ID: <seq>`` is first given what it missed,
read by a consumer of its own that starts after that sequence, then the live
feed, with nothing twice. Filters (each a comma-separated list): ``agent_type``,
``kind`` (``task``, ``heal`` or one kind such as ``task.completed``),
``task_id`` and ``host`` (a heal event's host; a task event's worker's host, as
its heartbeats say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from foundry.contracts import HealAction, HealEvent, TaskEvent, TaskStatus
from foundry.contracts.heartbeat import HOST_RE
from foundry.contracts.task import TASK_ID_RE
from foundry.errors import BrokerUnavailable
from foundry.livetable import LiveTable
from foundry.names import Names
from foundry.rejections import REJECTIONS
from gateway.errors import bad_request
from gateway.jsonio import json_response
from gateway.keys import JS, NC, SETTINGS
from gateway.spec import Param
from gateway.sse import SseClient, frame, wants_stream
from gateway.streamscan import StreamScan

log = logging.getLogger(__name__)
LINGER = 10.0  # seconds the reader keeps going after the last client left
FETCH = 256
REPLAY_MAX = 10_000  # events one reconnect may replay
REPLAY_SECONDS = 5.0
JSON_RECENT = 100  # events the JSON form returns without Last-Event-ID

KINDS = (
    "task",
    "heal",
    *(f"task.{s.value}" for s in TaskStatus),
    *(f"heal.{a.value}" for a in HealAction),
)
_ONE_KIND = "|".join(re.escape(k) for k in KINDS)
_TYPE = "[a-z][a-z0-9_-]{0,31}"
_LIST_OF = "^{0}(,{0}){{0,31}}$"
AGENT_TYPE = Param(
    "agent_type", "query", {"type": "string", "pattern": _LIST_OF.format(_TYPE)},
    "Only events of these agent types (comma-separated)",
)  # fmt: skip
KIND = Param(
    "kind", "query", {"type": "string", "pattern": _LIST_OF.format(f"({_ONE_KIND})")},
    "Only these kinds: task, heal, or one such as task.completed, heal.relaunch",
)  # fmt: skip
TASK = Param(
    "task_id", "query", {"type": "string", "pattern": _LIST_OF.format(TASK_ID_RE.pattern[1:-1])},
    "Only events of these tasks",
)  # fmt: skip
HOST = Param(
    "host", "query", {"type": "string", "pattern": _LIST_OF.format(HOST_RE.pattern[1:-1])},
    "Only events from these hosts",
)  # fmt: skip
LAST_EVENT_ID = Param(
    "Last-Event-ID", "header", {"type": "string", "pattern": "^[0-9]{1,18}$"},
    "Resume after this event (the id of the last one received): what was missed comes first",
)  # fmt: skip
PARAMS = (AGENT_TYPE, KIND, TASK, HOST, LAST_EVENT_ID)


@dataclass(frozen=True)
class Event:
    """One parsed event from the stream."""

    seq: int
    kind: str
    agent_type: str | None
    task_id: str | None
    host: str | None
    worker_id: str | None
    body: dict[str, Any]

    def frame(self) -> bytes:
        return frame(self.kind, self.body, str(self.seq))


def parse(names: Names, seq: int, subject: str, data: bytes) -> Event | None:
    """The event at ``seq``, or None (counted) when it fails its contract."""
    family = subject[len(names.events()) - 1 :].split(".", 1)[0]
    if family == "task":
        task = REJECTIONS.parse(lambda: TaskEvent.from_payload(data), subject)
        if task is None:
            return None
        body = task.to_json()
        return Event(seq, task.kind, task.agent_type, task.task_id, None, task.worker_id, body)
    if family == "heal":
        heal = REJECTIONS.parse(lambda: HealEvent.from_payload(data), subject)
        if heal is None:
            return None
        task_id = heal.text("task_id")
        body = heal.to_json()
        return Event(seq, heal.kind, heal.agent_type, task_id, heal.host, heal.worker_id, body)
    return None


@dataclass(frozen=True)
class Filters:
    agent_types: frozenset[str]
    kinds: frozenset[str]
    task_ids: frozenset[str]
    hosts: frozenset[str]

    @classmethod
    def from_request(cls, request: web.Request) -> Filters:
        def read(param: Param) -> frozenset[str]:
            text = request.query.get(param.name)
            if text is None:
                return frozenset()
            pattern = param.schema["pattern"] if isinstance(param.schema, dict) else ""
            if not re.fullmatch(pattern, text):
                raise bad_request(f"{param.name}: {param.description.lower()}", param.name)
            return frozenset(text.split(","))

        return cls(read(AGENT_TYPE), read(KIND), read(TASK), read(HOST))

    def match(self, event: Event, workers: LiveTable) -> bool:
        if self.kinds and event.kind not in self.kinds:
            if event.kind.split(".", 1)[0] not in self.kinds:
                return False
        if self.agent_types and event.agent_type not in self.agent_types:
            return False
        if self.task_ids and event.task_id not in self.task_ids:
            return False
        if self.hosts:
            host = event.host
            if host is None and event.worker_id is not None:
                seen = workers.get(event.worker_id)
                host = seen.beat.host if seen is not None else None
            if host not in self.hosts:
                return False
        return True


def last_event_id(request: web.Request) -> int | None:
    text = request.headers.get(LAST_EVENT_ID.name)
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()):
        raise bad_request(
            "Last-Event-ID must be the id of an event received (a stream sequence number)",
            LAST_EVENT_ID.name,
        )
    return int(text)


async def read_events(
    js: JetStreamContext,
    names: Names,
    start: int,
    keep: Callable[[Event], bool],
    until: int | None = None,
    limit: int = REPLAY_MAX,
) -> list[Event]:
    """Events from sequence ``start`` (up to ``until``), bounded in count and time."""
    out: list[Event] = []
    scan = StreamScan(
        js, names.events_stream, names.events(">"), limit=limit, within=REPLAY_SECONDS,
        start_seq=start, batch=FETCH,
    )  # fmt: skip
    async with scan:
        async for msgs in scan:
            for msg in msgs:
                seq = msg.metadata.sequence.stream
                if until is not None and seq > until:
                    return out
                event = parse(names, seq, msg.subject, msg.data)
                if event is not None and keep(event):
                    out.append(event)
    return out


@dataclass(eq=False)
class Watcher:
    client: SseClient
    filters: Filters
    after: int = 0  # send only events past this sequence (what a replay already sent)


class EventHub:
    """The gateway's one follower of AGENT_EVENTS, shared by every SSE client."""

    def __init__(self, js: JetStreamContext, names: Names, workers: LiveTable) -> None:
        self.js, self.names, self.workers = js, names, workers
        self.watchers: set[Watcher] = set()
        self.position = 0  # the last sequence handed to watchers
        self.delivered = 0
        self._reader: asyncio.Task[None] | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._starting = asyncio.Lock()

    async def join(self, watcher: Watcher) -> int:
        """Start following if needed; returns the sequence the live feed starts after."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        async with self._starting:
            if self._reader is None or self._reader.done():
                info = await self.js.stream_info(self.names.events_stream)
                self.position = info.state.last_seq
                self._reader = asyncio.get_running_loop().create_task(self._follow())
        self.watchers.add(watcher)
        return self.position

    def leave(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)
        if not self.watchers and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER, self._stop_if_idle)

    def _stop_if_idle(self) -> None:
        self._linger = None
        if not self.watchers and self._reader is not None:
            self._reader.cancel()

    async def stop(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        for watcher in list(self.watchers):
            watcher.client.done.set()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    def dispatch(self, event: Event) -> None:
        data: bytes | None = None
        for watcher in list(self.watchers):
            if event.seq <= watcher.after or not watcher.filters.match(event, self.workers):
                continue
            data = data or event.frame()
            if watcher.client.offer(data):
                self.delivered += 1

    async def _follow(self) -> None:
        """Read the stream from ``position``; re-create the consumer after any failure."""
        names, failures = self.names, 0
        while True:
            config = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.position + 1,
                ack_policy=AckPolicy.NONE,
                filter_subject=names.events(">"),
                inactive_threshold=30.0,
            )
            psub = None
            try:
                psub = await self.js.pull_subscribe(
                    names.events(">"), stream=names.events_stream, config=config
                )
                failures = 0
                while True:
                    try:
                        msgs = await psub.fetch(FETCH, timeout=1.0)
                    except (TimeoutError, nats.errors.TimeoutError):
                        continue
                    for msg in msgs:
                        seq = msg.metadata.sequence.stream
                        if seq <= self.position:
                            continue
                        self.position = seq
                        event = parse(names, seq, msg.subject, msg.data)
                        if event is not None:
                            self.dispatch(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("events reader: %r; following again from %d", exc, self.position + 1)
                await asyncio.sleep(min(0.2 * failures, 2.0))
            finally:
                if psub is not None:
                    await _drop(self.js, names, psub)


async def _drop(js: JetStreamContext, names: Names, psub: Any) -> None:
    with contextlib.suppress(Exception):
        info = await asyncio.wait_for(psub.consumer_info(), 1.0)
        await psub.unsubscribe()
        await asyncio.wait_for(js.delete_consumer(names.events_stream, info.name), 1.0)


HUB = web.AppKey("event_hub", EventHub)


def hub_of(app: web.Application) -> EventHub:
    return app[HUB]


async def close_hub(app: web.Application) -> None:
    if HUB in app:
        await app[HUB].stop()


async def events(request: web.Request) -> web.StreamResponse:
    """GET /api/cluster/events — SSE (Accept: text/event-stream) or the recent events as JSON."""
    filters = Filters.from_request(request)
    after = last_event_id(request)
    if not request.app[NC].is_connected:
        raise BrokerUnavailable("NATS is unreachable")
    hub = hub_of(request.app)
    keep = lambda e: filters.match(e, hub.workers)  # noqa: E731
    if not wants_stream(request):
        names, js = request.app[SETTINGS].names, request.app[JS]
        if after is None:
            info = await js.stream_info(names.events_stream)
            after = max(0, info.state.last_seq - JSON_RECENT)
        found = await read_events(js, names, after + 1, keep, limit=REPLAY_MAX)
        last = found[-1].seq if found else after
        body = [{"id": e.seq, **e.body} for e in found[-1000:]]
        return json_response({"events": body, "count": len(body), "last_event_id": last})
    client = SseClient(request)
    watcher = Watcher(client, filters)
    live_after = await hub.join(watcher)
    try:
        await client.open()
        if after is not None and after < live_after:
            watcher.after = live_after  # the live feed sends what comes after the replay
            missed = await read_events(
                request.app[JS], hub.names, after + 1, keep, until=live_after
            )
            for event in missed:
                if not await client.write(event.frame()):
                    break
        await client.write(b": connected\n\n")
        await client.pump()
    finally:
        hub.leave(watcher)
    return await client.close()
