"""Workflows survive kills: a worker killed mid-step, the leading orchestrator killed between
steps (with a standby beside it). The workflow completes and no finished step runs again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry import codec
from foundry.natsauth import ORCHESTRATOR
from foundry.settings import Settings
from tests.cluster import slots, start_healer, wait_running
from tests.conftest import Gateway, eventually
from tests.fakes import WebhookReceiver, serve, webhook_app
from tests.procs import ProcessGroup
from tests.workflowfakes import (
    APPROVE,
    ScriptedLLM,
    llm_settings,
    settled,
    start_workflow,
    steps_of,
)


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
async def test_killed_worker_and_killed_leader_resume_without_rerunning_finished_steps(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, nc: NATS
) -> None:
    # Given a build workflow whose coder and critic take a moment to answer
    llm = ScriptedLLM()
    llm.script("kilo", APPROVE)
    llm.hold[("kilo", "coder")] = 1.0
    llm.hold[("kilo", "critic")] = 0.3  # shorter than a takeover: stored while none leads
    receiver = WebhookReceiver()
    async with serve(llm.app()) as llm_url, serve(webhook_app(receiver)) as hook_url:
        # and a healer running the orchestrator and the fleet, plus a standby orchestrator
        settings: Settings = make_settings(**llm_settings(llm_url, hook_url))
        start_healer(procs, settings, "--services", "orchestrator")
        procs.start(["-m", "orchestrator"], settings, "orchestrator-standby", ORCHESTRATOR)
        await wait_running(nc, settings, timeout=60)
        gw: Gateway = await make_gateway(settings)
        await start_workflow(gw, workflow="build", input={"description": "kilo"},
                             workflow_id="wf-kilo")  # fmt: skip

        # When the coder worker is killed while its step runs
        await asyncio.wait_for(llm.event("kilo", "coder").wait(), 60)
        coder_pid = (await slots(nc, settings))["coder-0"]["pid"]
        os.kill(coder_pid, signal.SIGKILL)
        # and the leading orchestrator is killed while the critic works (its step finishes
        # with no leader listening)
        await asyncio.wait_for(llm.event("kilo", "critic").wait(), 60)
        leader = await lease_holder(nc, settings)
        assert leader is not None
        killed_at, wall_killed_at = time.monotonic(), time.time()
        os.kill(int(leader.split("-")[-2]), signal.SIGKILL)
        successor = await eventually(
            lambda: _other(lease_holder(nc, settings), leader), 30, interval=0.02
        )
        takeover = time.monotonic() - killed_at

        # Then the workflow completes
        state = await settled(gw, "wf-kilo")
        assert state["status"] == "completed", (state, procs.logs())
        runs = steps_of(state)
        # and no finished step ran again: one plan, one review, one deploy; the killed
        # coder step ran twice (its first run never finished), the rest once
        assert llm.calls[("kilo", "architect")] == 1
        assert llm.calls[("kilo", "coder")] == 2 and runs["code.1"]["attempts"] == 2
        assert llm.calls[("kilo", "critic")] == 1
        assert len(receiver.requests) == 1 and runs["deploy.1"]["attempts"] == 1
        assert successor != leader
    review_done = runs["review.1"]["finished_at"]
    assert review_done < wall_killed_at + takeover  # the result came while no one led
    resumed = runs["deploy.1"]["submitted_at"] - wall_killed_at
    print(
        f"\nleader killed: lease taken over after {takeover:.2f}s (FOUNDRY_LEASE_TTL=1); the "
        f"critic's result was stored {review_done - wall_killed_at:.2f}s after the kill, the "
        f"next step submitted {resumed:.2f}s after the kill"
    )


async def _other(holder: Any, old: str) -> str | None:
    current = await holder
    return current if current is not None and current != old else None
