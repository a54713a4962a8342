"""Figures of the live views, against a real gateway process: chunk latency from a worker's
emit to an SSE client, and how many events a second one gateway delivers to 50 SSE clients.

The figures are printed (``pytest -s``); the assertions only guard against hangs and loss.
``FOUNDRY_LIVE_CHUNKS`` and ``FOUNDRY_LIVE_EVENTS`` make the runs longer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from aiohttp import ClientSession, ClientTimeout

from foundry.connect import connect_nats
from foundry.contracts import TaskEvent, TaskStatus
from foundry.natsauth import GATEWAY
from foundry.provision import provision
from foundry.servers import free_port
from foundry.settings import Settings
from tests.conftest import ApiTokens, eventually
from tests.procs import ProcessGroup
from tests.sse import SMALL_STREAMS, STREAM, frames

CHUNKS = int(os.environ.get("FOUNDRY_LIVE_CHUNKS", "200"))
EVENTS = int(os.environ.get("FOUNDRY_LIVE_EVENTS", "2000"))
CLIENTS = 50


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def gateway_up(http: ClientSession, base: str) -> bool:
    try:
        async with http.get(f"{base}/api/cluster/status") as resp:
            return resp.status == 200
    except OSError:
        return False


async def test_chunk_latency_and_event_fan_out(
    make_settings: Callable[..., Settings],
    procs: ProcessGroup,
    api_tokens: ApiTokens,
) -> None:
    settings = make_settings(**SMALL_STREAMS,
        fleet={"coder": 1}, handlers={"coder": "tests.streaming_handlers:stamped"},
        gateway_port=free_port(), sse_buffer=5000,
    )  # fmt: skip
    conn = await connect_nats(settings, "provision")  # as under a healer
    await provision(conn.jetstream(), settings)
    procs.start(["-m", "gateway"], settings, "gateway", GATEWAY)
    procs.worker(settings, "coder")
    base = f"http://127.0.0.1:{settings.gateway_port}"
    auth = api_tokens.header(api_tokens.admin)
    async with ClientSession(headers=auth, timeout=ClientTimeout(total=120)) as http:
        await eventually(lambda: gateway_up(http, base), 30, interval=0.2)
        # Chunk latency: a task emits CHUNKS time stamps 10 ms apart; the client notes arrival
        body = {"agent_type": "coder", "description": "t", "task_id": "lat-1",
                "input": {"chunks": CHUNKS, "delay": 0.01}}  # fmt: skip
        async with http.post(f"{base}/api/cluster/task/submit", json=body) as resp:
            assert resp.status == 202
        delays: list[float] = []
        resp = await http.get(f"{base}/api/cluster/task/lat-1/stream", headers=STREAM)
        async for frame in frames(resp):
            if frame.event == "output":
                delays.append(time.time() - float(frame.data["data"]))
            elif frame.event == "end":
                break
        resp.close()
        assert len(delays) == CHUNKS
        live = delays[len(delays) // 10 :]  # chunks emitted after the client was following
        p50, p99 = percentile(live, 0.5) * 1000, percentile(live, 0.99) * 1000
        print(f"\nchunk latency worker → SSE client: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
              f"max {max(live) * 1000:.1f} ms (n={len(live)})")  # fmt: skip
        assert p99 < 1000  # a guard against hangs; the figure is printed

        # Fan-out: CLIENTS clients follow the event stream; EVENTS events are published
        counts = [0] * CLIENTS
        ready = [False] * CLIENTS

        async def follow(i: int) -> None:
            async with http.get(f"{base}/api/cluster/events?kind=task", headers=STREAM) as r:
                async for chunk in r.content.iter_any():
                    if b": connected" in chunk:
                        ready[i] = True
                    counts[i] += chunk.count(b"id: ")
                    if counts[i] >= EVENTS:
                        return

        readers = [asyncio.ensure_future(follow(i)) for i in range(CLIENTS)]
        await eventually(lambda: all(ready), 30)
        started = time.monotonic()
        for n in range(EVENTS):
            event = TaskEvent(TaskStatus.QUEUED, f"ev-{n}", "coder")
            await conn.publish(settings.names.task_event("queued", "coder"), event.to_payload())
        await conn.flush()
        published = time.monotonic() - started
        _, pending = await asyncio.wait(readers, timeout=120)
        took = time.monotonic() - started
        for task in pending:
            task.cancel()
        rate = EVENTS / took
        print(f"fan-out: {EVENTS} events to {CLIENTS} SSE clients in {took:.2f}s "
              f"(published in {published:.2f}s) = {rate:,.0f} events/s per client, "
              f"{rate * CLIENTS:,.0f} frames/s from the gateway")  # fmt: skip
        await conn.close()
        assert not pending and all(c >= EVENTS for c in counts), counts
