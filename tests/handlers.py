"""Handlers used by the tests, bound with FOUNDRY_HANDLERS=type=tests.handlers:<name>."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from workers.handlers import RetryableError, TaskContext


def _marks(ctx: TaskContext) -> Path | None:
    folder = (ctx.input or {}).get("marks") if isinstance(ctx.input, dict) else None
    return Path(folder) if folder else None


def _mark(ctx: TaskContext, what: str) -> None:
    """Record an execution as a file, so a test can count runs across processes."""
    folder = _marks(ctx)
    if folder is not None:
        name = f"{ctx.task_id}.{what}.{os.getpid()}.{ctx.attempt}.{time.monotonic_ns()}"
        (folder / name).touch()


async def record(ctx: TaskContext) -> Any:
    """Echo, leaving a mark per execution; sleeps ``input.sleep`` seconds first."""
    _mark(ctx, "run")
    sleep = (ctx.input or {}).get("sleep", 0) if isinstance(ctx.input, dict) else 0
    if sleep:
        await asyncio.sleep(float(sleep))
    return {"description": ctx.description, "pid": os.getpid(), "attempt": ctx.attempt}


async def block(ctx: TaskContext) -> Any:
    """Hold the task until ``input.release`` exists (at most 60 s), then finish."""
    _mark(ctx, "start")
    release = Path(ctx.input["release"])
    for _ in range(1200):
        if release.exists():
            break
        await asyncio.sleep(0.05)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


async def fail(ctx: TaskContext) -> Any:
    raise ValueError(f"cannot handle {ctx.description!r}")


async def retry_once(ctx: TaskContext) -> Any:
    if ctx.attempt == 1:
        raise RetryableError("first attempt always retries", delay=0.2)
    return {"attempt": ctx.attempt}


async def crash(ctx: TaskContext) -> Any:
    """Kill the whole worker process when the task says so (a poison task)."""
    _mark(ctx, "run")
    if ctx.description == "poison":
        os._exit(13)
    return {"ok": True}


async def wedge(ctx: TaskContext) -> Any:
    """Block the event loop (a hung worker: no heartbeats)."""
    time.sleep(float((ctx.input or {}).get("seconds", 30)))
    return {"woke": True}


async def retry_always(ctx: TaskContext) -> Any:
    raise RetryableError("never ready", delay=0.1)


_BALLAST: list[bytes] = []


async def grow(ctx: TaskContext) -> Any:
    """Grow the process by ``input.mb`` MiB (kept), then finish after ``input.sleep`` seconds."""
    _BALLAST.append(b"\x01" * (int(ctx.input["mb"]) * 1024 * 1024))
    await asyncio.sleep(float(ctx.input.get("sleep", 1.0)))
    return {"pid": os.getpid(), "held_mib": len(_BALLAST) * int(ctx.input["mb"])}


async def broken_while(ctx: TaskContext) -> Any:
    """Retry (never succeed) while the file ``input.broken`` exists; then finish."""
    _mark(ctx, "run")
    if Path(ctx.input["broken"]).exists():
        raise RetryableError("the handler is broken", delay=0.05)
    return {"fixed": True, "attempt": ctx.attempt}
