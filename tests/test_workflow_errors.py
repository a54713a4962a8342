"""Bad definitions stop the orchestrator (exit 2, naming the file and the problem); bad
requests get clear answers naming the field; the orchestrator's bus role does its job only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts.workflow import StepRun, StepStatus, WorkflowState
from foundry.natsauth import GATEWAY, HEALER, ORCHESTRATOR
from foundry.provision import ensure_buckets
from foundry.settings import Settings
from tests.conftest import Gateway, eventually
from tests.procs import ROOT, ProcessGroup, child_env
from tests.test_bus_auth import Conn, connect_as, watching
from tests.workflowfakes import post

__all__ = ["connect_as"]  # the fixture, used by name below


def run_orchestrator(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=child_env(settings, ORCHESTRATOR),
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_bad_definition_stops_the_orchestrator_naming_file_and_problem(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # Given a workflows folder with one good and one bad definition
    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "good.toml").write_text('name = "good"\n[[steps]]\nname = "a"\nagent = "coder"\n')
    bad = folder / "bad.toml"
    bad.write_text('name = "bad"\n[[steps]]\nname = "a"\nagent = "coder"\nafter = ["ghost"]\n')
    settings = make_settings(workflows_dir=str(folder))
    # When the orchestrator starts (or is checked), Then it exits 2 saying what is wrong where
    for args in ((), ("--check",)):
        out = run_orchestrator(settings, *args)
        assert out.returncode == 2, out.stderr
        assert f"{bad}: step 'a': after names unknown step 'ghost'" in out.stderr, out.stderr
    # and a folder that does not exist is named too
    out = run_orchestrator(make_settings(workflows_dir=str(tmp_path / "nope")))
    assert out.returncode == 2 and "FOUNDRY_WORKFLOWS_DIR" in out.stderr, out.stderr


async def test_bad_requests_get_clear_answers(
    settings: Settings, nc: NATS, redis: Any, gateway: Gateway, procs: ProcessGroup
) -> None:
    # Given an orchestrator (no workers: the first step just waits in its queue)
    procs.start(["-m", "orchestrator"], settings, "orchestrator", ORCHESTRATOR)
    http, url = gateway.http, gateway.url("/api/cluster/workflows")

    async def leads() -> bool:
        status, _ = await post(http, url, {"workflow": "build", "input": {"description": "x"},
                                           "workflow_id": "wf-ok"})  # fmt: skip
        return status == 202

    await eventually(leads, 30, interval=0.2)
    cases: list[tuple[Any, int, str]] = [
        ({"workflow": "nope"}, 404, "no workflow named 'nope'; known: build"),
        ({"workflow": "build"}, 400, "input.description is required"),
        ({"workflow": "build", "input": {"description": ""}}, 400, "input.description"),
        ({"workflow": "build", "input": ["x"]}, 400, "input must be a JSON object"),
        ({"workflow": "Build!"}, 400, "workflow is required"),
        ({"workflow": "build", "colour": 1}, 400, "unknown field(s) ['colour']"),
        ({"workflow": "build", "workflow_id": "a.b"}, 400, "workflow_id must be"),
        ([1, 2], 400, "body must be a JSON object"),
    ]
    for body, code, message in cases:
        status, out = await post(http, url, body)
        assert (status, message in out["message"]) == (code, True), (body, status, out)
    # A retried start is the same workflow
    status, out = await post(http, url, {"workflow": "build", "input": {"description": "x"},
                                         "workflow_id": "wf-ok"})  # fmt: skip
    assert status == 202 and out["duplicate"] is True
    # Unknown and malformed ids, bad waits, approvals with nothing waiting, cancels twice
    async with http.get(f"{url}/wf-ghost") as resp:
        assert resp.status == 404 and "wf-ghost" in (await resp.json())["message"]
    async with http.get(f"{url}/bad.id") as resp:
        assert resp.status == 400
    async with http.get(f"{url}/wf-ok?wait=nope") as resp:
        assert resp.status == 400 and (await resp.json())["field"] == "wait"
    status, out = await post(http, f"{url}/wf-ok/approve", {"comment": "fine"})
    assert status == 409 and "nothing waits for approval" in out["message"], out
    status, out = await post(http, f"{url}/wf-ok/approve", {"by": "me"})
    assert status == 400 and out["field"] == "by"
    status, out = await post(http, f"{url}/wf-ok/cancel")
    assert status == 200 and out["status"] == "cancelled", out
    status, out = await post(http, f"{url}/wf-ok/cancel")
    assert status == 409 and "already cancelled" in out["message"]
    status, out = await post(http, f"{url}/wf-ghost/cancel")
    assert status == 404


async def test_orchestrator_role_does_its_job_and_no_more(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names = settings.names
    orch = await connect_as(ORCHESTRATOR)
    await ensure_buckets(orch.js, settings)  # its own buckets: it may create them
    gateway = await connect_as(GATEWAY)
    events = await watching(nc, names.workflow_event())
    # The orchestrator submits tasks, announces workflow events and writes workflow state
    ack = await orch.js.publish(names.tasks("coder"), b"step", headers={"Nats-Msg-Id": "o-1"})
    assert ack.seq >= 1
    await orch.nc.publish(names.workflow_event("started"), b"{}")
    state = WorkflowState("wf-bus", "build", {"description": "x"})
    state.add(StepRun("plan", 1, StepStatus.RUNNING, "architect", "wf-bus.plan.1"))
    subject = names.kv_subject(names.workflow_bucket, "wf-bus")
    headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
    await orch.js.publish(subject, state.to_payload(), headers=headers)
    stream = names.kv_stream(names.workflow_bucket)
    got = await orch.js.get_msg(stream, subject=subject, direct=True)
    assert WorkflowState.from_payload(got.data or b"").workflow_id == "wf-bus"

    # and answers requests the gateway sends
    async def answer(msg: Any) -> None:
        await msg.respond(b'{"state": {}}')

    await orch.nc.subscribe(names.workflows("get"), cb=answer)
    await orch.nc.flush()
    reply = await gateway.nc.request(names.workflows("get"), b"{}", timeout=5)
    assert reply.data == b'{"state": {}}'
    await eventually(lambda: events.msgs, 5)
    # When it tries what is not its job, Then the server refuses it
    await orch.publish_refused(names.heal_event("relaunch"))
    await orch.publish_refused(names.control("heal"))
    await orch.publish_refused(names.heartbeat("coder", "coder-0"))
    await orch.publish_refused(names.task_event("completed", "coder"))
    delete = f"$JS.API.STREAM.DELETE.{stream}"
    await orch.api_refused(delete, orch.js.delete_stream(stream))
    await orch.nc.subscribe(names.heartbeat())
    await orch.refused(names.heartbeat())
    # and the gateway may not write workflow state, nor the healer create the buckets
    await gateway.publish_refused(subject, state.to_payload())
    healer = await connect_as(HEALER)
    create = f"$JS.API.STREAM.CREATE.{stream}"
    await healer.api_refused(create, healer.nc.request(create, b"{}", timeout=1))
