"""``GET /api/cluster/task/{task_id}/stream``: a task's output as it is emitted, then its end.

Frames: ``event: output`` (``id: <attempt>:<seq>``; data ``{attempt, seq,
stream, data, at}``) for each chunk, in order within an attempt — a chunk of a
later attempt means the earlier attempt's output is void — and one
``event: end`` with the task's record once its status is final. What was
emitted before the client came is read from the task store's output list; live
chunks come from ``agents.output.*.<task_id>``; a reconnect with
``Last-Event-ID: <attempt>:<seq>`` resumes after that chunk. Without
``Accept: text/event-stream`` the answer is the stored output and status as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from functools import partial
from typing import Any

from aiohttp import web
from nats.aio.msg import Msg

from foundry.contracts import TASK_ID_HINT, TaskOutput, valid_task_id
from foundry.rejections import REJECTIONS
from foundry.store import TaskRecord, TaskStore
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import NC, SETTINGS, STORE, VIEW
from gateway.spec import Param
from gateway.sse import SseClient, frame, wants_stream

GAP_RETRIES = 3  # re-reads of the stored output when a live chunk skips ahead
GAP_WAIT = 0.02
Position = tuple[int, int]

RESUME = Param(
    "Last-Event-ID", "header", {"type": "string", "maxLength": 32},
    "Resume after this chunk: the id (<attempt>:<seq>) of the last one received. Any other "
    "value is not an id this stream sent: the output is sent from the start",
)  # fmt: skip


def resume_after(request: web.Request) -> Position:
    """Where to resume: after (attempt, seq), or from the start for anything else."""
    text = request.headers.get(RESUME.name, "")
    if len(text) > 32:
        raise bad_request(
            "Last-Event-ID is over 32 characters: not an id of this stream", RESUME.name
        )
    match = re.fullmatch(r"([0-9]{1,6}):([0-9]{1,9})", text.strip())
    if match is None:
        return (0, -1)
    return int(match.group(1)), int(match.group(2))


def _chunk(out: TaskOutput) -> dict[str, Any]:
    return {"attempt": out.attempt, "seq": out.seq, "stream": out.stream, "data": out.data,
            "at": out.at}  # fmt: skip


def _stored(raw: list[bytes], task_id: str) -> list[TaskOutput]:
    out = []
    for payload in raw:
        chunk = REJECTIONS.parse(partial(TaskOutput.from_payload, payload))
        if chunk is not None and chunk.task_id == task_id:
            out.append(chunk)
    return out


class Relay:
    """Sends chunks in order, once each: stored ones first, live ones as they come."""

    def __init__(self, client: SseClient, store: TaskStore, task_id: str, after: Position):
        self.client, self.store, self.task_id = client, store, task_id
        self.last = after  # the last position sent
        self.read = 0  # entries of the stored list already read
        self.live: asyncio.Queue[TaskOutput] = asyncio.Queue(maxsize=client.queue.maxsize)

    def expects(self, out: TaskOutput) -> bool:
        attempt, seq = self.last
        return (out.attempt == attempt and out.seq == seq + 1) or (
            out.attempt > attempt and out.seq == 0
        )

    async def send(self, out: TaskOutput) -> None:
        if out.position <= self.last:
            return
        self.last = out.position
        self.client.offer(frame("output", _chunk(out), f"{out.attempt}:{out.seq}"))

    async def catch_up(self) -> None:
        """Send what the store holds beyond what was sent."""
        raw = await self.store.output(self.task_id, self.read)
        self.read += len(raw)
        for out in _stored(raw, self.task_id):
            await self.send(out)

    async def on_live(self, out: TaskOutput) -> None:
        for _ in range(GAP_RETRIES):
            if self.expects(out) or out.position <= self.last:
                break
            await self.catch_up()  # published before we listened: the store has it soon
            if self.expects(out) or out.position <= self.last:
                break
            await asyncio.sleep(GAP_WAIT)
        await self.send(out)


async def task_stream(request: web.Request) -> web.StreamResponse:
    """GET /api/cluster/task/{task_id}/stream"""
    task_id = request.match_info["task_id"]
    if not valid_task_id(task_id):
        raise bad_request(f"task_id must be {TASK_ID_HINT}", "task_id")
    after = resume_after(request)
    store = request.app[STORE]
    record = await store.get(task_id)
    if record is None:
        raise ApiError(
            404, "not_found", f"no task {task_id!r} (never submitted, or expired)",
            task_id=task_id,
        )  # fmt: skip
    if not wants_stream(request):
        chunks = _stored(await store.output(task_id), task_id)
        return json_response({**record.to_json(), "output": [_chunk(c) for c in chunks]})
    client = SseClient(request)
    relay = Relay(client, store, task_id, after)
    names, nc = request.app[SETTINGS].names, request.app[NC]

    async def on_chunk(msg: Msg) -> None:
        out = REJECTIONS.parse(lambda: TaskOutput.from_payload(msg.data, msg.subject))
        if out is not None and out.task_id == task_id:
            try:
                relay.live.put_nowait(out)
            except asyncio.QueueFull:
                client.cut_off()

    sub = await nc.subscribe(names.output("*", task_id), cb=on_chunk)
    try:
        async with request.app[VIEW].waiter(task_id) as finished:
            await nc.flush(timeout=2)
            await client.open()
            await relay.catch_up()
            record = await store.get(task_id)
            if record is None or not record.final:
                record = await _follow(relay, finished)
            await client.flush()
            if record is not None and record.final and not client.cut:
                await relay.catch_up()  # output is stored before the final status
                await client.flush()
                await client.write(frame("end", record.to_json()))
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return await client.close()


async def _follow(relay: Relay, finished: asyncio.Future[None]) -> TaskRecord | None:
    """Relay live chunks until the task's final event (or a poll finds it final)."""
    client, store, task_id = relay.client, relay.store, relay.task_id
    loop = asyncio.get_running_loop()

    async def feed() -> None:
        while True:
            await relay.on_live(await relay.live.get())

    async def ended() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await finished
        client.done.set()

    async def poll() -> None:  # a final event missed (NATS away while it was sent)
        current = await store.get(task_id)
        if current is None or current.final:
            client.done.set()

    feeder, watch_end = loop.create_task(feed()), loop.create_task(ended())
    try:
        await client.pump(idle=poll)
    finally:
        watch_end.cancel()
        feeder.cancel()
    while not relay.live.empty():  # the live chunks that came before the end
        await relay.on_live(relay.live.get_nowait())
    return await store.get(task_id)
