"""The handler API through real worker processes: context, progress, retry, failures, bindings."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from foundry import codec
from foundry.connect import connect_nats
from foundry.settings import ExecSettings
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task


async def test_custom_handler_progress_shows_in_heartbeats(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker bound by dotted path to a handler that reports progress and then waits
    settings = make_settings(
        handlers={"coder": "tests.custom_handlers:stepwise"}, exec=ExecSettings(timeout=7.0)
    )
    gw = await make_gateway(settings)
    nc = await connect_nats(settings, "test")
    beats: list[dict[str, Any]] = []

    async def on_beat(msg: Msg) -> None:
        beats.append(codec.loads(msg.data))

    await nc.subscribe(settings.names.heartbeat("coder", "*"), cb=on_beat)
    procs.worker(settings, "coder")
    release = tmp_path / "release"
    try:
        # When a task is submitted over HTTP
        await submit(
            gw,
            agent_type="coder",
            description="two steps",
            task_id="steps-1",
            input={"release": str(release)},
        )

        # Then the worker's heartbeats carry the task's progress note
        def noted() -> bool:
            return any(
                f.get("task_id") == "steps-1" and f.get("progress") == "step 1 of 2"
                for beat in beats
                for f in beat.get("in_flight", [])
            )

        await eventually(noted, 30)
        # When the handler is let go, the result shows what its context carried
        release.touch()
        rec = await wait_task(gw, "steps-1", wait=30)
        assert rec["status"] == "completed", procs.logs()
        out = rec["result"]
        assert out["task_id"] == "steps-1" and out["agent_type"] == "coder"
        assert out["description"] == "two steps" and out["attempt"] == 1
        assert out["last_progress"] == "step 2 of 2"
        assert out["namespace"] == settings.namespace and out["exec_timeout"] == 7.0
        assert out["worker_id"] == rec["worker_id"]
    finally:
        await nc.close()


async def test_retry_failure_and_failure_with_result(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given three workers whose handlers retry once, raise, and fail with a result
    settings = make_settings(
        handlers={
            "coder": "tests.handlers:retry_once",
            "critic": "tests.handlers:fail",
            "architect": "tests.custom_handlers:fail_with_result",
        }
    )
    gw = await make_gateway(settings)
    for agent_type in ("coder", "critic", "architect"):
        procs.worker(settings, agent_type)
    # When a task goes to each
    for agent_type in ("coder", "critic", "architect"):
        await submit(gw, agent_type=agent_type, description="x", task_id=f"api-{agent_type}")
    # Then RetryableError redelivered the task, which then completed on attempt 2 ...
    rec = await wait_task(gw, "api-coder", wait=30)
    assert rec["status"] == "completed", procs.logs()
    assert rec["attempts"] == 2 and rec["result"] == {"attempt": 2}
    # ... any other exception failed the task with its message ...
    rec = await wait_task(gw, "api-critic", wait=30)
    assert rec["status"] == "failed" and rec["error"] == "ValueError: cannot handle 'x'"
    assert rec["attempts"] == 1
    # ... and TaskFailed kept its message and its partial result
    rec = await wait_task(gw, "api-architect", wait=30)
    assert rec["status"] == "failed" and rec["error"] == "the report is incomplete"
    assert rec["result"] == {"partial": [1, 2]}


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("coder=no_such_module_xyz:run", "cannot import 'no_such_module_xyz'"),
        ("coder=tests.custom_handlers:missing", "has no attribute 'missing'"),
        ("coder=tests.custom_handlers:not_async", "must be an async function"),
        ("coder=not-a-builtin", "neither a built-in"),
        ("coder", "is not 'type=handler'"),
        ("Coder.x=echo", "agent type"),
    ],
)
async def test_bad_handlers_setting_refuses_to_start(
    make_settings: Any, procs: ProcessGroup, value: str, words: str
) -> None:
    # Given a worker started with a bad FOUNDRY_HANDLERS value
    proc = procs.worker(make_settings(), "coder", FOUNDRY_HANDLERS=value)
    # Then it exits with code 2 and a message naming the variable and the problem
    code = await asyncio.to_thread(proc.wait, 30)
    output = procs.logs()
    assert code == 2, output
    assert "FOUNDRY_HANDLERS" in output and words in output
