"""Workflows survive kills: a worker killed mid-step, the leading orchestrator killed between
steps (with a standby beside it), the gateway killed while a client waits. The workflow
completes and no finished step runs again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from aiohttp import ClientSession
from nats.aio.client import Client as NATS

from foundry import codec
from foundry.natsauth import ORCHESTRATOR
from foundry.servers import free_port
from foundry.settings import Settings
from tests.cluster import slots, start_healer, wait_running
from tests.conftest import ApiTokens, eventually
from tests.procs import ProcessGroup
from tests.workflowfakes import (
    APPROVE,
    Fakes,
    Remote,
    ScriptedLLM,
    fakes,
    llm_settings,
    settled,
    start_workflow,
    steps_of,
)

__all__ = ["fakes"]  # the fixture, used by name below


@pytest.fixture
def settings(make_settings: Any, fakes: Fakes) -> Settings:
    """The fleet with default handlers against the fakes, the gateway on a known port."""
    out: Settings = make_settings(
        **llm_settings(fakes.llm_url, fakes.hook_url), gateway_port=free_port()
    )
    return out


async def lease_holder(nc: NATS, settings: Settings) -> str | None:
    """Who holds the orchestrator lease now (host-pid-suffix), if anyone."""
    names = settings.names
    stream = names.kv_stream(names.lease_bucket)
    try:
        msg = await nc.jetstream().get_msg(stream, subject=names.kv_subject(names.lease_bucket,
                                           "orchestrator"), direct=True)  # fmt: skip
    except Exception:
        return None
    holder = codec.loads(msg.data).get("holder") if msg.data else None
    return holder if isinstance(holder, str) else None


@pytest.mark.timeout(240)
async def test_killed_worker_leader_and_gateway_resume_without_rerunning_finished_steps(
    settings: Settings, fakes: Fakes, api_tokens: ApiTokens, procs: ProcessGroup, nc: NATS
) -> None:
    # Given a build workflow whose coder and critic take a moment to answer
    llm = fakes.llm
    llm.script("kilo", APPROVE)
    llm.hold[("kilo", "coder")] = 1.0
    llm.hold[("kilo", "critic")] = 0.3  # shorter than a takeover: stored while none leads
    # and a healer running the gateway, the orchestrator and the fleet, plus a standby
    # orchestrator
    start_healer(procs, settings, "--services", "gateway,orchestrator")
    procs.start(["-m", "orchestrator"], settings, "orchestrator-standby", ORCHESTRATOR)
    await wait_running(nc, settings, timeout=60)
    http = ClientSession(headers=api_tokens.header(api_tokens.admin))
    gw = Remote(f"http://127.0.0.1:{settings.gateway_port}", http)
    try:
        await eventually(lambda: _answers(gw), 30, interval=0.2)
        await start_workflow(gw, workflow="build", input={"description": "kilo"},
                             workflow_id="wf-kilo")  # fmt: skip
        state, runs, takeover, leader_killed = await _kill_all_three(gw, llm, nc, settings)
    finally:
        await http.close()
    assert state["status"] == "completed", (state, procs.logs())
    # Then no finished step ran again: one plan, one review, one deploy; the killed
    # coder step ran twice (its first run never finished), the rest once
    assert llm.calls[("kilo", "architect")] == 1
    assert llm.calls[("kilo", "coder")] == 2 and runs["code.1"]["attempts"] == 2
    assert llm.calls[("kilo", "critic")] == 1
    assert len(fakes.receiver.requests) == 1 and runs["deploy.1"]["attempts"] == 1
    review_done = runs["review.1"]["finished_at"]
    assert review_done < leader_killed + takeover  # the result came while no one led
    resumed = runs["deploy.1"]["submitted_at"] - leader_killed
    print(
        f"\nleader killed: lease taken over after {takeover:.2f}s (FOUNDRY_LEASE_TTL=1); the "
        f"critic's result was stored {review_done - leader_killed:.2f}s after the kill, the "
        f"next step submitted {resumed:.2f}s after the kill"
    )


async def _kill_all_three(
    gw: Remote, llm: ScriptedLLM, nc: NATS, settings: Settings
) -> tuple[dict[str, Any], dict[str, Any], float, float]:
    # When the coder worker is killed while its step runs
    await asyncio.wait_for(llm.event("kilo", "coder").wait(), 60)
    os.kill((await slots(nc, settings))["coder-0@host-a"]["pid"], signal.SIGKILL)
    # and the leading orchestrator while the critic works (its step finishes with no
    # leader listening), and the gateway right after
    await asyncio.wait_for(llm.event("kilo", "critic").wait(), 60)
    leader = await lease_holder(nc, settings)
    assert leader is not None
    killed_at, wall_killed_at = time.monotonic(), time.time()
    os.kill(int(leader.split("-")[-2]), signal.SIGKILL)
    os.kill((await slots(nc, settings))["gateway"]["pid"], signal.SIGKILL)
    successor = await eventually(
        lambda: _other(lease_holder(nc, settings), leader), 30, interval=0.02
    )
    takeover = time.monotonic() - killed_at
    assert successor != leader
    # Then the workflow completes (read through the relaunched gateway)
    state = await settled(gw, "wf-kilo")
    return state, steps_of(state), takeover, wall_killed_at


async def _answers(gw: Remote) -> bool:
    try:
        async with gw.http.get(gw.url("/api/cluster/workflows/probe")) as resp:
            return resp.status == 404
    except OSError:
        return False


async def _other(holder: Any, old: str) -> str | None:
    current = await holder
    return current if current is not None and current != old else None
