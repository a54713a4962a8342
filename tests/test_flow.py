"""End to end: tasks over HTTP and over core NATS reach workers and their results come back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from foundry.settings import Settings
from tests.conftest import Gateway
from tests.procs import ProcessGroup


async def submit(gw: Gateway, **body: Any) -> dict[str, Any]:
    async with gw.http.post(gw.url("/api/cluster/task/submit"), json=body) as resp:
        assert resp.status == 202, await resp.text()
        out: dict[str, Any] = await resp.json()
        return out


async def wait_task(gw: Gateway, task_id: str, wait: float = 20) -> dict[str, Any]:
    async with gw.http.get(gw.url(f"/api/cluster/task/{task_id}"), params={"wait": str(wait)}) as r:
        assert r.status == 200, await r.text()
        out: dict[str, Any] = await r.json()
        return out


async def test_http_submit_reaches_workers_of_several_types(
    settings: Settings, gateway: Gateway, procs: ProcessGroup
) -> None:
    # Given one echo worker for each of three agent types
    for agent_type in ("coder", "architect", "critic"):
        procs.worker(settings, agent_type)
    # When tasks are submitted over HTTP for each type
    submitted = []
    for agent_type in ("coder", "architect", "critic"):
        for i in range(3):
            out = await submit(
                gateway, agent_type=agent_type, description=f"job {i}", input={"n": i}
            )
            assert out["status"] == "submitted" and out["agent_type"] == agent_type
            submitted.append((out["task_id"], agent_type, i))
    # Then each result can be read back with ?wait, produced by a worker of that type
    results = await asyncio.gather(*(wait_task(gateway, tid) for tid, _, _ in submitted))
    for (tid, agent_type, i), rec in zip(submitted, results, strict=True):
        assert rec["status"] == "completed", (rec, procs.logs())
        assert rec["task_id"] == tid and rec["agent_type"] == agent_type
        assert rec["result"]["input"] == {"n": i}
        assert rec["result"]["agent_type"] == agent_type
        assert rec["attempts"] == 1
        assert rec["worker_id"].startswith(agent_type)
        assert rec["finished_at"] >= rec["started_at"] >= rec["submitted_at"]


async def test_query_form_submit(settings: Settings, gateway: Gateway, procs: ProcessGroup) -> None:
    procs.worker(settings, "coder")
    async with gateway.http.post(
        gateway.url("/api/cluster/task/submit"), params={"agent_type": "coder", "description": "hi"}
    ) as resp:
        assert resp.status == 202
        task_id = (await resp.json())["task_id"]
    rec = await wait_task(gateway, task_id)
    assert rec["status"] == "completed" and rec["result"]["description"] == "hi"


async def test_core_nats_publish_json_and_plain_text(
    settings: Settings, gateway: Gateway, nc: NATS, procs: ProcessGroup
) -> None:
    # Given a worker, and tasks sent the way `nats pub agents.tasks.coder ...` sends them
    procs.worker(settings, "coder")
    subject = settings.names.tasks("coder")
    await nc.publish(
        subject,
        b'{"description": "as json", "input": {"x": 1}}',
        headers={"Nats-Msg-Id": "cli-json-1"},
    )
    await nc.publish(subject, b"just some text", headers={"Nats-Msg-Id": "cli-text-1"})
    await nc.publish(subject, b'{"task_id": "from-payload-1", "description": "id in body"}')
    await nc.flush()
    # Then each is readable through the gateway by its id
    rec = await wait_task(gateway, "cli-json-1")
    assert rec["status"] == "completed", procs.logs()
    assert rec["result"] == {"description": "as json", "input": {"x": 1}, "agent_type": "coder"}
    rec = await wait_task(gateway, "cli-text-1")
    assert rec["status"] == "completed" and rec["result"]["description"] == "just some text"
    rec = await wait_task(gateway, "from-payload-1")
    assert rec["status"] == "completed" and rec["result"]["description"] == "id in body"


async def test_request_reply_publish_gets_stream_ack_and_seq_id(
    settings: Settings, gateway: Gateway, nc: NATS, procs: ProcessGroup
) -> None:
    # Given `nats req agents.tasks.coder "text"`: no Msg-Id, the stream ack tells the sequence
    procs.worker(settings, "coder")
    reply = await nc.request(settings.names.tasks("coder"), b"no id at all", timeout=5)
    import json

    ack = json.loads(reply.data)
    # Then the task id is seq-<stream sequence>
    rec = await wait_task(gateway, f"seq-{ack['seq']}")
    assert rec["status"] == "completed" and rec["result"]["description"] == "no id at all"


async def test_same_task_id_runs_once(
    settings: Settings, gateway: Gateway, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker that leaves a mark per execution
    marks = tmp_path / "marks"
    marks.mkdir()
    s = Settings(**{**settings.__dict__, "handlers": {"coder": "tests.handlers:record"}})
    procs.worker(s, "coder")
    # When the same task_id is submitted twice (before and after it finished)
    first = await submit(
        gateway,
        agent_type="coder",
        description="once",
        task_id="dup-1",
        input={"marks": str(marks)},
    )
    second = await submit(
        gateway,
        agent_type="coder",
        description="once",
        task_id="dup-1",
        input={"marks": str(marks)},
    )
    rec = await wait_task(gateway, "dup-1")
    third = await submit(
        gateway,
        agent_type="coder",
        description="once",
        task_id="dup-1",
        input={"marks": str(marks)},
    )
    await asyncio.sleep(0.5)
    # Then it ran exactly once and the repeats were reported as duplicates
    assert rec["status"] == "completed", procs.logs()
    assert not first["duplicate"] and second["duplicate"] and third["duplicate"]
    assert len(list(marks.iterdir())) == 1
