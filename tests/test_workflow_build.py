"""The built-in build workflow end to end: a healer runs the orchestrator and the five roles
with their real handlers (llm against a local scripted model, exec in the sandbox, webhook
to a local receiver); workflows go through the gateway."""

from __future__ import annotations

import asyncio
import json
import statistics
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.settings import Settings
from tests.cluster import start_healer, wait_running
from tests.conftest import Gateway
from tests.fakes import WebhookReceiver
from tests.procs import ProcessGroup
from tests.workflowfakes import (
    APPROVE,
    Fakes,
    fakes,
    llm_settings,
    post,
    revise,
    settled,
    start_workflow,
    steps_of,
)

__all__ = ["fakes"]  # the fixture, used by name below
MARKERS = ("alpha", "bravo", "charlie", "delta", "echo")


@pytest.fixture
def settings(make_settings: Any, fakes: Fakes) -> Settings:
    """One worker per role with its default handler, against the fakes."""
    out: Settings = make_settings(**llm_settings(fakes.llm_url, fakes.hook_url))
    return out


def deploys(receiver: WebhookReceiver) -> dict[str, dict[str, Any]]:
    """Deploy requests by workflow id (from the task id header), and their bodies."""
    out: dict[str, dict[str, Any]] = {}
    for headers, raw in receiver.requests:
        workflow_id = headers["X-Foundry-Task-Id"].split(".")[0]
        assert workflow_id not in out, f"{workflow_id} deployed twice"
        out[workflow_id] = json.loads(raw)
    return out


@pytest.mark.timeout(240)
async def test_build_rounds_approval_and_cancel_through_the_gateway(
    settings: Settings, fakes: Fakes, make_gateway: Any, procs: ProcessGroup, nc: NATS
) -> None:
    # Given a scripted model: alpha is approved at once, bravo revised twice (the second
    # critique is not JSON) then approved, charlie revised every round, delta approved but
    # waiting for a person, and echo's coder answers only after a minute
    llm, receiver = fakes.llm, fakes.receiver
    llm.script("alpha", APPROVE)
    llm.script("bravo", revise("add a docstring"), "this reply is not JSON", APPROVE)
    llm.script("charlie", revise("still wrong"))
    llm.script("delta", APPROVE)
    llm.script("echo", APPROVE)
    llm.hold[("echo", "coder")] = 60.0
    # and a healer running the orchestrator and one worker per role, default handlers
    start_healer(procs, settings, "--services", "orchestrator")
    await wait_running(nc, settings, timeout=60)
    gw: Gateway = await make_gateway(settings)

    # When the five workflows are started through the gateway
    for marker in MARKERS:
        task_input: dict[str, Any] = {"description": f"a greeter called {marker}"}
        if marker == "delta":
            task_input["require_approval"] = True
        out = await start_workflow(
            gw, workflow="build", input=task_input, workflow_id=f"wf-{marker}"
        )
        assert out["workflow_id"] == f"wf-{marker}" and not out["duplicate"]
    # and echo is cancelled while its coder works
    await asyncio.wait_for(llm.event("echo", "coder").wait(), 60)
    status, cancelled = await post(gw.http, gw.url("/api/cluster/workflows/wf-echo/cancel"))
    assert status == 200 and cancelled["status"] == "cancelled", cancelled

    alpha, bravo, charlie, delta = [
        await settled(gw, f"wf-{m}") for m in ("alpha", "bravo", "charlie", "delta")
    ]
    # Then alpha ran every role once and deployed the code it ran, once
    assert alpha["status"] == "completed" and alpha["round"] == 1, procs.logs()
    runs = steps_of(alpha)
    assert [k for k, r in runs.items() if r["status"] == "completed"] == [
        "plan.1", "code.1", "run.1", "review.1", "deploy.1"
    ]  # fmt: skip
    assert runs["approval.1"]["status"] == "skipped"
    assert runs["run.1"]["output"]["stdout"] == "hello alpha\n"
    assert {role: llm.calls[("alpha", role)] for role in ("architect", "coder", "critic")} == {
        "architect": 1, "coder": 1, "critic": 1
    }  # fmt: skip
    # bravo took three rounds, and each critique reached the next round's coder
    assert bravo["status"] == "completed" and bravo["round"] == 3, bravo
    coder_prompts = [p for m, r, p in llm.prompts if m == "bravo" and r == "coder"]
    assert len(coder_prompts) == 3 and llm.calls[("bravo", "architect")] == 1
    assert "add a docstring" in coder_prompts[1] and "add a docstring" not in coder_prompts[0]
    assert "this reply is not JSON" in coder_prompts[2]
    # charlie failed after the last round with the last critique
    assert charlie["status"] == "failed" and charlie["round"] == 3
    assert "all 3 rounds" in charlie["error"] and "still wrong" in charlie["error"]
    assert llm.calls[("charlie", "coder")] == 3 and "deploy.1" not in steps_of(charlie)
    # delta waits for a person, deploying nothing until approved
    assert delta["status"] == "waiting_approval" and "deploy.1" not in steps_of(delta)
    url = gw.url("/api/cluster/workflows/wf-delta/approve")
    status, approved = await post(gw.http, url, {"comment": "ship it"})
    assert status == 200, approved
    delta = await settled(gw, "wf-delta")
    assert delta["status"] == "completed", delta
    assert steps_of(delta)["approval.1"]["approved_by"] == "test-admin"
    status, again = await post(gw.http, url, {})
    assert status == 409, again
    # the webhook received the approved code and its run, once per deployed workflow
    shipped = deploys(receiver)
    assert set(shipped) == {"wf-alpha", "wf-bravo", "wf-delta"}
    assert shipped["wf-alpha"]["input"]["code"] == "print('hello alpha')\n"
    assert shipped["wf-alpha"]["input"]["run"]["exit_code"] == 0
    # and echo's coder task was cancelled, nothing after it started
    echo = await settled(gw, "wf-echo")
    assert echo["status"] == "cancelled" and set(steps_of(echo)) == {"plan.1", "code.1"}
    async with gw.http.get(gw.url("/api/cluster/task/wf-echo.code.1?wait=10")) as resp:
        assert (await resp.json())["status"] == "cancelled"
    async with gw.http.get(gw.url("/api/cluster/task/wf-echo.run.1")) as resp:
        assert resp.status == 404
    assert llm.calls[("echo", "critic")] == 0
    overhead = [
        s["overhead_seconds"]
        for w in (alpha, bravo)
        for s in w["steps"]
        if s["task_id"] and s["step"] != "plan"
    ]
    print(
        f"\norchestration overhead per step (previous step finished → next submitted), "
        f"n={len(overhead)}: median {statistics.median(overhead) * 1000:.1f} ms, "
        f"max {max(overhead) * 1000:.1f} ms"
    )
