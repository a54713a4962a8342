"""The cluster event stream: live task and heal events over SSE, filtered, resumable with
Last-Event-ID, with keep-alives, a slow client cut off without slowing the others."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.connect import connect_nats
from foundry.contracts import HealAction, HealEvent, TaskEvent, TaskStatus
from foundry.rejections import REJECTIONS
from foundry.settings import Settings
from tests.conftest import ApiTokens, Gateway, eventually
from tests.sse import SMALL_STREAMS, open_stream

EVENTS = "/api/cluster/events"


async def publish_task(
    nc: NATS, settings: Settings, status: TaskStatus, agent: str, tid: str
) -> None:
    event = TaskEvent(status, tid, agent, worker_id=f"{agent}-0", attempt=1)
    await nc.publish(settings.names.task_event(status, agent), event.to_payload())


async def publish_heal(nc: NATS, settings: Settings, slot: str) -> None:
    event = HealEvent(
        HealAction.RELAUNCH, "host-a", slot=slot, reason="exit", details={"new_pid": 7}
    )
    await nc.publish(settings.names.heal_event("relaunch"), event.to_payload())


async def stream_seqs(nc: NATS, settings: Settings) -> int:
    info = await nc.jetstream().stream_info(settings.names.events_stream)
    return int(info.state.last_seq)


async def test_filtered_live_events_carry_stream_ids_and_resume_with_last_event_id(
    gateway: Gateway, nc: NATS, settings: Settings
) -> None:
    # Given a client watching coder task events only
    reader = await open_stream(gateway.http, gateway.url(EVENTS), kind="task", agent_type="coder")
    await eventually(lambda: "connected" in reader.comments, 5)
    # When task events of two types, a heal event and a malformed event are published
    rejected = REJECTIONS.total("task_event")
    await publish_task(nc, settings, TaskStatus.RUNNING, "coder", "c-1")
    await publish_task(nc, settings, TaskStatus.RUNNING, "architect", "a-1")
    await publish_heal(nc, settings, "coder-0")
    await nc.publish(settings.names.task_event("completed", "coder"), b'{"status": "nope"}')
    await publish_task(nc, settings, TaskStatus.COMPLETED, "coder", "c-1")
    await nc.flush()
    # Then it gets the two coder events, in order, each with its stream sequence as id
    await eventually(lambda: len(reader.got) >= 2, 5)
    assert [(f.event, f.data["task_id"]) for f in reader.got] == [
        ("task.running", "c-1"),
        ("task.completed", "c-1"),
    ]
    ids = [int(f.id or 0) for f in reader.got]
    assert ids[0] < ids[1] == await stream_seqs(nc, settings)
    assert REJECTIONS.total("task_event") == rejected + 1  # the malformed one, counted
    await reader.close()
    # When it reconnects after missing three events, with the last id it saw
    for n in range(3):
        await publish_task(nc, settings, TaskStatus.QUEUED, "coder", f"missed-{n}")
    await nc.flush()
    await eventually(lambda: stream_seqs(nc, settings), 2)
    again = await open_stream(
        gateway.http, gateway.url(EVENTS), last_id=str(ids[-1]), kind="task", agent_type="coder"
    )
    await eventually(lambda: "connected" in again.comments, 5)
    await publish_task(nc, settings, TaskStatus.QUEUED, "coder", "live-1")
    # Then the missed ones come first, then the live one, nothing twice
    await eventually(lambda: len(again.got) >= 4, 5)
    assert [f.data["task_id"] for f in again.got] == ["missed-0", "missed-1", "missed-2", "live-1"]
    got_ids = [int(f.id or 0) for f in again.got]
    assert got_ids == sorted(set(got_ids)) and got_ids[0] > ids[-1]
    await again.close()


async def test_heal_events_by_host_and_task_id_filter(
    gateway: Gateway, nc: NATS, settings: Settings
) -> None:
    # Given clients filtering by host and by task id
    by_host = await open_stream(gateway.http, gateway.url(EVENTS), host="host-a")
    by_task = await open_stream(gateway.http, gateway.url(EVENTS), task_id="t-9,t-10")
    await eventually(lambda: "connected" in by_host.comments and "connected" in by_task.comments, 5)
    # When a heal event from host-a and task events of several tasks are published
    await publish_heal(nc, settings, "coder-0")
    for tid in ("t-8", "t-9", "t-10"):
        await publish_task(nc, settings, TaskStatus.QUEUED, "coder", tid)
    # Then each sees only its own
    await eventually(lambda: by_host.got and len(by_task.got) >= 2, 5)
    await asyncio.sleep(0.2)
    assert [(f.event, f.data["slot"], f.data["new_pid"]) for f in by_host.got] == [
        ("heal.relaunch", "coder-0", 7)
    ]
    assert [f.data["task_id"] for f in by_task.got] == ["t-9", "t-10"]
    await by_host.close()
    await by_task.close()


async def test_keepalives_json_form_and_bad_input(
    make_settings: Callable[..., Settings], make_gateway: Any, nc: NATS, redis: Any
) -> None:
    settings = make_settings(**SMALL_STREAMS, sse_keepalive=0.2)
    gw: Gateway = await make_gateway(settings)
    # Given an idle stream, keep-alive comments arrive
    reader = await open_stream(gw.http, gw.url(EVENTS))
    await eventually(lambda: "keep-alive" in reader.comments, 3)
    await reader.close()
    # A caller that does not ask for a stream gets the recent events as JSON, at once
    conn = await connect_nats(settings, "test")
    try:
        await publish_task(conn, settings, TaskStatus.QUEUED, "coder", "j-1")
        await conn.flush()
        await asyncio.sleep(0.1)
    finally:
        await conn.close()
    async with gw.http.get(gw.url(EVENTS)) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert (
        body["events"][-1]["task_id"] == "j-1" and body["last_event_id"] == body["events"][-1]["id"]
    )
    # Bad filters and a bad Last-Event-ID are refused naming the field
    for params, headers, field in (
        ({"kind": "task.exploded"}, {}, "kind"),
        ({"agent_type": "Bad.Type"}, {}, "agent_type"),
        ({"host": "a b"}, {}, "host"),
        ({}, {"Last-Event-ID": "yesterday"}, "Last-Event-ID"),
    ):
        async with gw.http.get(gw.url(EVENTS), params=params, headers=headers) as resp:
            assert resp.status == 400, params
            assert (await resp.json())["field"] == field


async def test_a_slow_client_is_cut_off_and_the_others_get_everything(
    make_settings: Callable[..., Settings],
    make_gateway: Any,
    nc: NATS,
    redis: Any,
    api_tokens: ApiTokens,
) -> None:
    settings = make_settings(**SMALL_STREAMS, sse_buffer=400)
    gw: Gateway = await make_gateway(settings)
    # Given a client that reads everything and one that never reads (tiny receive buffer)
    fast = await open_stream(gw.http, gw.url(EVENTS), kind="task")
    port = gw.server.port
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", port))
    request = (
        f"GET {EVENTS}?kind=task HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {api_tokens.admin}\r\nAccept: text/event-stream\r\n\r\n"
    )
    slow.sendall(request.encode())
    await eventually(lambda: "connected" in fast.comments, 5)
    await asyncio.sleep(0.3)
    # When 20,000 events are published (far more than the slow client's buffers hold)
    total = 20_000
    started = time.monotonic()
    for n in range(total):
        await publish_task(nc, settings, TaskStatus.QUEUED, "coder", f"flood-{n}")
    await nc.flush()
    # Then the reading client gets every one, in order
    try:
        await eventually(lambda: len(fast.got) >= total or fast.ended.is_set(), 60, interval=0.1)
    finally:
        print(f"\nthe reading client got {len(fast.got)} of {total}")
    took = time.monotonic() - started
    assert [f.data["task_id"] for f in fast.got[:3]] == ["flood-0", "flood-1", "flood-2"]
    assert len({f.id for f in fast.got}) == total
    # and the slow one was cut off: its connection ends once its buffers are drained
    slow.setblocking(False)
    loop = asyncio.get_running_loop()

    async def drained() -> bool:
        try:
            data = await asyncio.wait_for(loop.sock_recv(slow, 65536), 1)
        except (ConnectionError, OSError):
            return True
        return data == b""

    await eventually(drained, 20, interval=0)
    slow.close()
    await fast.close()
    print(f"\n{total} events to one reader (one cut off) in {took:.2f}s")


@pytest.mark.parametrize("path", [EVENTS])
async def test_the_event_stream_needs_scope_read(
    gateway: Gateway, api_tokens: ApiTokens, path: str
) -> None:
    submit_only = api_tokens.header(api_tokens.make("ci", "submit"))
    async with gateway.http.get(gateway.url(path), headers=submit_only) as resp:
        assert resp.status == 403 and (await resp.json())["scope"] == "read"
