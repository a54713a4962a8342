"""Helpers for tests that run a healer: events, slot status, pids."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.natsauth import HEALER
from foundry.settings import Settings
from tests.procs import ProcessGroup


class Events:
    """Collects heal events (and optionally heartbeats) from core NATS."""

    def __init__(self) -> None:
        self.heal: list[dict[str, Any]] = []
        self.beats: list[dict[str, Any]] = []

    def of(self, action: str, /, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.heal
            if e["kind"] == f"heal.{action}" and all(e.get(k) == v for k, v in match.items())
        ]


@contextlib.asynccontextmanager
async def watch(nc: NATS, settings: Settings) -> AsyncIterator[Events]:
    events = Events()

    async def on_heal(msg: Msg) -> None:
        events.heal.append(codec.loads(msg.data))

    async def on_beat(msg: Msg) -> None:
        events.beats.append(codec.loads(msg.data))

    subs = [
        await nc.subscribe(settings.names.heal_event(">"), cb=on_heal),
        await nc.subscribe(settings.names.heartbeat(), cb=on_beat),
    ]
    try:
        yield events
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def slots(nc: NATS, settings: Settings) -> dict[str, dict[str, Any]]:
    reply = await nc.request(settings.names.control("status"), b"{}", timeout=5)
    return {s["slot"]: s for s in codec.loads(reply.data)["slots"]}


async def wait_running(nc: NATS, settings: Settings, timeout: float = 30) -> dict[str, Any]:
    """Wait until the healer answers and every worker slot has heartbeated."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            current = await slots(nc, settings)
            workers = [s for s in current.values() if s["kind"] == "worker"]
            if workers and all(s["state"] == "running" for s in workers):
                return current
        except Exception:
            pass
        if loop.time() > deadline:
            raise AssertionError("healer slots not running in time")
        await asyncio.sleep(0.1)


def start_healer(
    procs: ProcessGroup, settings: Settings, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    procs.adopt_run_dir(settings.data_dir / "run")
    return procs.start(["-m", "healer", *args], settings, "healer", HEALER, **env)
