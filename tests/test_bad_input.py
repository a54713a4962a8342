"""Bad input gets a clear JSON error naming the field, and nothing is lost."""

from __future__ import annotations

from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.connect import connect_nats
from foundry.settings import Settings
from tests.conftest import Gateway
from tests.procs import ProcessGroup
from tests.test_flow import wait_task

SUBMIT = "/api/cluster/task/submit"


async def post(gw: Gateway, **kw: Any) -> tuple[int, dict[str, Any]]:
    async with gw.http.post(gw.url(SUBMIT), **kw) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@pytest.mark.parametrize("agent_type", ["coder.>", "*", "a b", "", "x" * 300, "Coder", 7, None])
async def test_invalid_agent_type(gateway: Gateway, agent_type: object) -> None:
    status, body = await post(gateway, json={"agent_type": agent_type, "description": "d"})
    assert status == 400
    assert body["field"] == "agent_type"
    assert "agent type" in body["message"] or "agent_type" in body["message"]


async def test_unknown_agent_type_lists_known(gateway: Gateway, settings: Settings) -> None:
    status, body = await post(gateway, json={"agent_type": "painter", "description": "d"})
    assert status == 400 and body["field"] == "agent_type"
    assert body["known_types"] == list(settings.fleet)
    assert "coder" in body["message"]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"json": {"agent_type": "coder"}}, "description"),
        ({"json": {"agent_type": "coder", "description": "  "}}, "description"),
        ({"json": {"agent_type": "coder", "description": 5}}, "description"),
        ({"json": {"agent_type": "coder", "description": "d", "task_id": "bad id!"}}, "task_id"),
        ({"json": {"agent_type": "coder", "description": "d", "task_id": 12}}, "task_id"),
        ({"json": {"agent_type": "coder", "description": "d", "colour": 1}}, "colour"),
        ({"json": {"description": "d"}}, "agent_type"),
        ({"json": [1, 2]}, "body"),
        ({"json": "text"}, "body"),
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, "body"),
    ],
)
async def test_malformed_submissions(gateway: Gateway, kw: dict[str, Any], field: str) -> None:
    status, body = await post(gateway, **kw)
    assert status == 400, body
    assert body["error"] == "bad_request" and body["field"] == field
    assert body["message"]


async def test_oversized_body_is_413(make_settings: Any, nc: Any, make_gateway: Any) -> None:
    settings = make_settings(max_task_bytes=2048)
    gw = await make_gateway(settings)
    status, body = await post(gw, json={"agent_type": "coder", "description": "x" * 20_000})
    assert status == 413 and "FOUNDRY_MAX_TASK_BYTES" in body["message"]
    # a body just under the HTTP limit but a task over the task limit is also 413
    status, body = await post(gw, json={"agent_type": "coder", "description": "x" * 3000})
    assert status == 413 and body["error"] == "payload_too_large"


async def test_unknown_task_and_bad_wait(gateway: Gateway) -> None:
    async with gateway.http.get(gateway.url("/api/cluster/task/nope-123")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    for wait in ("soon", "-1", "100000", "nan"):
        async with gateway.http.get(
            gateway.url("/api/cluster/task/x1"), params={"wait": wait}
        ) as r:
            assert r.status == 400, wait
            assert (await r.json())["field"] == "wait"
    async with gateway.http.get(gateway.url("/api/cluster/task/bad%20id")) as resp:
        assert resp.status == 400


async def test_worker_records_malformed_messages_and_keeps_going(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup, redis: Any
) -> None:
    # Given a worker with a small task size limit
    settings = make_settings(max_task_bytes=1000)
    gw = await make_gateway(settings)
    nc: NATS = await connect_nats(settings, "test")
    procs.worker(settings, "coder")
    subject = settings.names.tasks("coder")
    cases = {
        "bad-utf8": (b"\xff\xfe\xfa", "UTF-8"),
        "json-array": (b"[1, 2, 3]", "object"),
        "oversized": (b"x" * 5000, "over the 1000"),
        "broken-json": (b'{"description": ', "does not parse"),
        "no-desc": (b'{"input": null}', "neither"),
    }
    # When malformed messages arrive the way `nats pub` would send them
    for task_id, (payload, _) in cases.items():
        await nc.publish(subject, payload, headers={"Nats-Msg-Id": task_id})
    await nc.publish(subject, b"a good one", headers={"Nats-Msg-Id": "good-after"})
    await nc.flush()
    # Then each gets a failed result naming the reason, and the worker keeps serving
    for task_id, (_, reason) in cases.items():
        rec = await wait_task(gw, task_id)
        assert rec["status"] == "failed", (task_id, rec, procs.logs())
        assert reason in rec["error"], rec
    rec = await wait_task(gw, "good-after")
    assert rec["status"] == "completed"
    assert procs.procs[0].poll() is None
    # and nothing stays in the queue
    info = await nc.jetstream().consumer_info(settings.names.tasks_stream, "workers-coder")
    assert info.num_pending == 0 and info.num_ack_pending == 0
    await nc.close()


async def test_full_queue_is_429_and_loses_nothing(make_settings: Any, make_gateway: Any) -> None:
    # Given a queue capped at two tasks and no worker draining it
    settings = make_settings(max_queue_per_type=2)
    gw = await make_gateway(settings)
    for i in range(2):
        status, _ = await post(
            gw, json={"agent_type": "coder", "description": "d", "task_id": f"q-{i}"}
        )
        assert status == 202
    # When a third arrives, it is refused with 429 saying what to do
    status, body = await post(
        gw, json={"agent_type": "coder", "description": "d", "task_id": "q-2"}
    )
    assert status == 429 and body["error"] == "queue_full" and body["agent_type"] == "coder"
    assert "FOUNDRY_MAX_QUEUE_PER_TYPE" in body["message"]
    # and left no record behind, while the accepted ones stay queued
    async with gw.http.get(gw.url("/api/cluster/task/q-2")) as resp:
        assert resp.status == 404
    async with gw.http.get(gw.url("/api/cluster/task/q-1")) as resp:
        assert (await resp.json())["status"] == "queued"
