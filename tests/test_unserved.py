"""A task for a type no fleet serves is dead-lettered after FOUNDRY_UNSERVED_GRACE."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts import MSG_ID_HEADER, DeadLetter
from foundry.settings import Settings
from foundry.store import TaskStore
from tests.cluster import start_healer, wait_running
from tests.conftest import eventually
from tests.procs import ProcessGroup


async def test_tasks_of_an_unserved_type_are_dead_lettered_with_the_reason(
    make_settings: Any, nc: NATS, redis: Any, procs: ProcessGroup
) -> None:
    # Given a healer whose fleet serves only coder, with a short grace
    settings: Settings = make_settings(
        fleet={"coder": 1}, handlers={"coder": "echo"}, unserved_grace=1.0
    )
    start_healer(procs, settings)
    await wait_running(nc, settings)
    js = nc.jetstream()
    # When tasks are published for a type nobody serves (and one for coder)
    for i in range(3):
        await js.publish(
            settings.names.tasks("nosuchtype"), b"lost?", headers={MSG_ID_HEADER: f"lost-{i}"}
        )
    await js.publish(settings.names.tasks("coder"), b"fine", headers={MSG_ID_HEADER: "fine-1"})
    store = TaskStore(redis, settings.names, 3600)

    async def status(task_id: str) -> str | None:
        record = await store.get(task_id)
        return record.status if record else None

    # Then each is dead-lettered with the reason, and the served one completes
    for i in range(3):
        await eventually(lambda i=i: _equals(status(f"lost-{i}"), "dead"), 20)  # type: ignore[misc]
    record = await store.get("lost-0")
    assert record is not None and "no worker serves type 'nosuchtype'" in (record.error or "")
    await eventually(lambda: _equals(status("fine-1"), "completed"), 20)
    dead = await js.get_msg(settings.names.dead_stream, subject=settings.names.dead("nosuchtype"))
    letter = DeadLetter.from_payload(dead.data or b"")
    assert letter.action == "unserved" and letter.agent_type == "nosuchtype"
    info = await js.stream_info(settings.names.tasks_stream, subjects_filter=">")
    assert settings.names.tasks("nosuchtype") not in (info.state.subjects or {})


async def _equals(value: Any, expected: str) -> bool:
    return bool(await value == expected)
