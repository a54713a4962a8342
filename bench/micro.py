"""Micro-measurements behind ``--codec-compare``: what a codec and a loop cost per operation.

The system-level comparison moves with the host's load; these run in one
process, take a fraction of a second, and bound what a codec or loop can buy:
the JSON a worker encodes and decodes per task (the task, its result, two
events, a share of a heartbeat) and the event-loop work of a stream round trip
and of spawning a task, on asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import uvloop

from bench.workload import payload

TASKS_PER_HEARTBEAT = 4  # a worker announces each fetched batch with a beat


def _sample_messages() -> dict[str, Any]:
    in_flight = [
        {"task_id": f"t-{i}", "stream_seq": 1000 + i, "reply": "$JS.ACK.x" * 4, "delivery": 1}
        for i in range(16)
    ]
    return {
        "task": payload("bench-123456", 123456),
        "result": {"description": "benchmark echo task", "input": {"n": 1, "data": "x" * 64}},
        "event": {
            "kind": "task.completed",
            "at": time.time(),
            "task_id": "bench-123456",
            "agent_type": "bench",
            "status": "completed",
            "worker_id": "bench-0",
            "attempt": 1,
            "error": None,
            "duration_seconds": 0.000123,
        },
        "heartbeat": {
            "worker_id": "bench-0",
            "agent_type": "bench",
            "host": "h",
            "pid": 1,
            "slot": 0,
            "state": "busy",
            "in_flight": in_flight,
            "processed": 10**6,
            "failed": 0,
            "rss_bytes": 50 * 2**20,
            "cpu_percent": 50.0,
        },
    }


def _codecs() -> dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]]:
    out: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any]]] = {
        "orjson": (orjson.dumps, orjson.loads),
        "json": (lambda o: json.dumps(o, separators=(",", ":")).encode(), json.loads),
    }
    try:
        import msgspec

        out["msgspec"] = (msgspec.json.encode, msgspec.json.decode)
    except ImportError:
        pass
    return out


def _per_op_us(fn: Callable[[], Any], count: int = 5000) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for _ in range(count):
            fn()
        best = min(best, (time.perf_counter() - started) / count)
    return best * 1e6


def _codec_row(
    dumps: Callable[[Any], bytes], loads: Callable[[bytes], Any], msgs: dict[str, Any]
) -> dict[str, float]:
    row = {
        "decode_task": _per_op_us(lambda: loads(msgs["task"])),
        "encode_result": _per_op_us(lambda: dumps(msgs["result"])),
        "encode_event": _per_op_us(lambda: dumps(msgs["event"])),
        "encode_heartbeat_16_in_flight": _per_op_us(lambda: dumps(msgs["heartbeat"]), 2000),
    }
    row["worker_per_task"] = (
        row["decode_task"]
        + row["encode_result"]
        + 2 * row["encode_event"]
        + row["encode_heartbeat_16_in_flight"] / TASKS_PER_HEARTBEAT
    )
    return {k: round(v, 2) for k, v in row.items()}


def codec_costs() -> dict[str, dict[str, float]]:
    """µs per operation, and the worker's JSON work per task, for each codec."""
    msgs = _sample_messages()
    return {name: _codec_row(dumps, loads, msgs) for name, (dumps, loads) in _codecs().items()}


async def _loop_work(round_trips: int, spawns: int) -> dict[str, float]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(64):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    for _ in range(round_trips):
        writer.write(b"ping\n")
        await reader.readexactly(5)
    rtt = (time.perf_counter() - started) / round_trips
    writer.close()
    server.close()
    await server.wait_closed()

    async def noop() -> None:
        await asyncio.sleep(0)

    started = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(noop()) for _ in range(spawns)))
    spawn = (time.perf_counter() - started) / spawns
    return {"stream_round_trip_us": round(rtt * 1e6, 2), "task_spawn_us": round(spawn * 1e6, 2)}


def loop_costs(round_trips: int = 3000, spawns: int = 20000) -> dict[str, dict[str, float]]:
    """A loopback stream round trip and a task spawn, on asyncio and on uvloop."""
    out = {}
    for name, factory in (("asyncio", asyncio.new_event_loop), ("uvloop", uvloop.new_event_loop)):
        best: dict[str, float] = {}
        for _ in range(3):
            with asyncio.Runner(loop_factory=factory) as runner:
                got = runner.run(_loop_work(round_trips, spawns))
            best = {k: min(v, best.get(k, v)) for k, v in got.items()}
        out[name] = best
    return out
