"""Cancelling tasks over NATS (``agents.control.cancel``): queued ones never run, running
ones are stopped by their worker, finished ones are left alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from foundry import codec
from foundry.contracts import MSG_ID_HEADER
from foundry.settings import Settings
from foundry.store import TaskStore
from tests.cluster import start_healer, wait_running
from tests.conftest import eventually
from tests.procs import ProcessGroup


async def cancel(nc: NATS, settings: Settings, task_id: str) -> dict[str, Any]:
    body = codec.dumps({"task_id": task_id})
    reply = await nc.request(settings.names.control("cancel"), body, timeout=5)
    out: dict[str, Any] = codec.loads(reply.data)
    return out


async def publish(
    nc: NATS, store: TaskStore, settings: Settings, task_id: str, marks: Path, sleep: float
) -> None:
    """Record the task as queued and publish it (what the gateway does on submit)."""
    await store.queue(task_id, "coder")
    body = codec.dumps({"description": "nap", "input": {"marks": str(marks), "sleep": sleep}})
    await nc.jetstream().publish(
        settings.names.tasks("coder"), body, headers={MSG_ID_HEADER: task_id}
    )


async def test_cancel_queued_running_finished_and_unknown(
    make_settings: Any, nc: NATS, redis: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given one coder worker that runs one task at a time (each naps for input.sleep)
    settings: Settings = make_settings(
        fleet={"coder": 1}, handlers={"coder": "tests.handlers:record"}, concurrency=1
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    store = TaskStore(redis, settings.names, 3600)
    start_healer(procs, settings)
    await wait_running(nc, settings)
    # and a long task running with another queued behind it
    await publish(nc, store, settings, "long-1", marks, 60)
    await publish(nc, store, settings, "queued-1", marks, 0)

    async def status(task_id: str) -> str | None:
        record = await store.get(task_id)
        return record.status if record else None

    await eventually(lambda: status("long-1"), 20)
    await eventually(lambda: _is(status("long-1"), "running"), 20)

    # When the queued one is cancelled, it is cancelled at once
    assert (await cancel(nc, settings, "queued-1"))["status"] in ("cancelled", "cancelling")
    # and the running one is stopped by its worker within a second
    began = time.monotonic()
    assert (await cancel(nc, settings, "long-1"))["status"] == "cancelling"
    await eventually(lambda: _is(status("long-1"), "cancelled"), 5, interval=0.02)
    stopped_after = time.monotonic() - began
    assert stopped_after < 2.0, stopped_after
    # Then the queued task never ran, and the cancelled ones stay cancelled (not retried)
    await eventually(lambda: _is(status("queued-1"), "cancelled"), 10)
    await publish(nc, store, settings, "after-1", marks, 0)
    await eventually(lambda: _is(status("after-1"), "completed"), 20)
    runs = sorted(p.name.split(".")[0] for p in marks.iterdir())
    assert runs == ["after-1", "long-1"], runs
    assert await status("long-1") == "cancelled" and await status("queued-1") == "cancelled"

    # and cancelling twice, a finished task or an unknown id each get a clear answer
    again = await cancel(nc, settings, "long-1")
    assert again["code"] == "conflict" and again["status"] == "cancelled"
    done = await cancel(nc, settings, "after-1")
    assert done["code"] == "conflict" and done["status"] == "completed"
    unknown = await cancel(nc, settings, "no-such-task")
    assert unknown["code"] == "not_found"
    bad = codec.loads((await nc.request(settings.names.control("cancel"), b"{}", timeout=5)).data)
    assert bad["code"] == "bad_request" and "task_id" in bad["error"]


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)
