"""Handlers that stream output, for the task stream tests (loaded by worker processes)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from workers import RetryableError, TaskContext


async def chatter(ctx: TaskContext) -> dict[str, Any]:
    """Emit ``chunks`` lines ``delay`` apart on stdout; with ``fail_first``, attempt 1 asks
    for a retry after its output, so a watcher sees a void attempt, then the good one; with
    ``until_replayed``, every attempt asks for a retry unless the task is a dead letter's
    replay (its id ends ``.replay-<n>``), so it reaches FOUNDRY_MAX_DELIVER."""
    spec = ctx.input if isinstance(ctx.input, dict) else {}
    chunks, delay = int(spec.get("chunks", 3)), float(spec.get("delay", 0.05))
    for n in range(chunks):
        await ctx.emit(f"attempt {ctx.attempt} line {n}\n", "stdout")
        await asyncio.sleep(delay)
    if spec.get("stderr"):
        await ctx.emit(str(spec["stderr"]), "stderr")
    if spec.get("until_replayed") and ".replay-" not in ctx.task_id:
        raise RetryableError("not until replayed", delay=0.05)
    if spec.get("fail_first") and ctx.attempt == 1:
        raise RetryableError("try again", delay=0.1)
    return {"chunks": chunks, "attempt": ctx.attempt}


async def stamped(ctx: TaskContext) -> dict[str, Any]:
    """Emit ``chunks`` pieces, each carrying the time it was emitted (for latency figures)."""
    spec = ctx.input if isinstance(ctx.input, dict) else {}
    chunks, delay = int(spec.get("chunks", 100)), float(spec.get("delay", 0.01))
    for _ in range(chunks):
        await ctx.emit(repr(time.time()))
        await asyncio.sleep(delay)
    return {"chunks": chunks}
