"""Dead letters over HTTP: listed from AGENT_DEAD with filters, replayed one by one and in
bulk under ids that keep their lineage; and, on a healer-run cluster, a task that died runs
again once its handler is fixed, driven by the ``foundry`` CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.contracts import MSG_ID_HEADER, DeadLetter, DeadLetterAction
from foundry.rejections import REJECTIONS
from foundry.servers import free_port
from foundry.settings import Settings
from foundry.store import TaskStore
from tests.cluster import start_healer, wait_running
from tests.conftest import ApiTokens, Gateway, eventually
from tests.procs import ROOT, ProcessGroup, child_env

MAX_DELIVER = DeadLetterAction.MAX_DELIVER
DELIVERED = "delivered 5 times without an ack (FOUNDRY_MAX_DELIVER=5)"
KILLED = "in flight at 3 worker deaths (FOUNDRY_POISON_KILLS=3)"


async def put_letter(
    nc: NATS, settings: Settings, task_id: str, agent_type: str, reason: str, payload: str
) -> None:
    """A dead letter as the healer writes it (the suite's admin stands in for the healer)."""
    action = DeadLetterAction.POISON if "deaths" in reason else MAX_DELIVER
    letter = DeadLetter(task_id, agent_type, 7, action, reason, payload, [{"deliveries": 5}])
    await nc.jetstream().publish(settings.names.dead(agent_type), letter.to_payload())


async def call(gw: Gateway, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with gw.http.request(method, gw.url(path), **kw) as resp:
        return resp.status, await resp.json()


async def ids(gw: Gateway, query: str = "") -> list[str]:
    status, body = await call(gw, "GET", f"/api/cluster/dead{query}")
    assert status == 200, body
    return [d["task_id"] for d in body["dead_letters"]]


@pytest.fixture
def submitter(api_tokens: ApiTokens) -> str:
    return api_tokens.make("ci", "submit", "read")


async def test_dead_letters_are_listed_with_filters_and_replayed_once_with_lineage(
    submitter: str, gateway: Gateway, nc: NATS, redis: aioredis.Redis, settings: Settings
) -> None:
    names, js = settings.names, nc.jetstream()
    store = TaskStore(redis, names, 3600)
    # Given dead letters of several types and reasons, written at two moments, one of a type
    # no longer in the fleet, and a record that is no dead letter at all
    await store.queue("a1", "coder")
    await store.mark_dead("a1", "coder", {"reason": DELIVERED})
    await put_letter(nc, settings, "a1", "coder", DELIVERED,
                     '{"task_id": "a1", "description": "x", "input": {"n": 1}}')  # fmt: skip
    await put_letter(nc, settings, "a2", "coder", KILLED, "poison text")
    await put_letter(nc, settings, "b1", "critic", DELIVERED, '{"description": "b"}')
    rejected = REJECTIONS.total("dead_letter")
    await js.publish(names.dead("coder"), b"not a dead letter")
    await asyncio.sleep(0.05)
    middle = time.time()
    await asyncio.sleep(0.05)
    await put_letter(nc, settings, "c1", "executor", KILLED, '{"description": "c"}')
    await put_letter(nc, settings, "x.replay-1", "coder", DELIVERED, '{"description": "x"}')
    await put_letter(nc, settings, "ghost", "retired", DELIVERED, '{"description": "g"}')

    # When they are listed, Then newest first, the malformed record skipped and counted
    assert await ids(gateway) == ["ghost", "x.replay-1", "c1", "b1", "a2", "a1"]
    assert REJECTIONS.total("dead_letter") == rejected + 1
    status, page = await call(gateway, "GET", "/api/cluster/dead?limit=2&offset=1")
    assert [d["task_id"] for d in page["dead_letters"]] == ["x.replay-1", "c1"]
    assert page["total"] == 6 and page["scanned"] == 7 and page["truncated"] is False
    first = page["dead_letters"][0]
    assert first["agent_type"] == "coder" and first["action"] == "max_deliver"
    assert first["reason"] == DELIVERED and first["replayed_as"] is None
    assert first["payload"] == '{"description": "x"}' and first["dead_at"] > middle
    # and each filter narrows them: agent type, reason (any case), since, until, combined
    assert await ids(gateway, "?agent_type=coder") == ["x.replay-1", "a2", "a1"]
    assert await ids(gateway, "?reason=WORKER%20DEATHS") == ["c1", "a2"]
    assert await ids(gateway, f"?since={middle}") == ["ghost", "x.replay-1", "c1"]
    assert await ids(gateway, f"?until={middle}") == ["b1", "a2", "a1"]
    assert await ids(gateway, f"?agent_type=coder&since={middle}&reason=deliver") == ["x.replay-1"]
    assert await ids(gateway, "?agent_type=deployer") == []
    assert await ids(gateway, f"?since={middle}&until=1") == []
    # and bad filters are 400s naming the field; a token without read is refused
    for query, field in (
        ("agent_type=Bad.Type", "agent_type"),
        ("since=soon", "since"),
        ("until=-1", "until"),
        ("limit=0", "limit"),
    ):
        status, body = await call(gateway, "GET", f"/api/cluster/dead?{query}")
        assert status == 400 and body["field"] == field, (query, body)
    status, body = await call(gateway, "POST", "/api/cluster/dead/replay",
                              headers=ApiTokens.header(submitter))  # fmt: skip
    assert status == 403 and body["scope"] == "operate"

    queued: list[dict[str, Any]] = []

    async def on_queued(msg: Msg) -> None:
        queued.append(codec.loads(msg.data))

    await nc.subscribe(names.task_event("queued", "*"), cb=on_queued)
    # When a dry run asks what a bulk replay of coder letters would do
    status, dry = await call(gateway, "POST", "/api/cluster/dead/replay?agent_type=coder&dry_run=1")
    # Then it counts them and changes nothing
    assert status == 200 and dry["dry_run"] is True and dry["count"] == 3, dry
    assert {d["task_id"] for d in dry["letters"]} == {"a1", "a2", "x.replay-1"}
    assert (await js.stream_info(names.tasks_stream)).state.messages == 0
    assert await store.get("a1.replay-1") is None

    # When one letter is replayed
    status, one = await call(gateway, "POST", "/api/cluster/dead/a1/replay")
    # Then it is queued again under a new id naming its original, with a fresh record
    assert status == 202 and one["new_task_id"] == "a1.replay-1", one
    status, new = await call(gateway, "GET", "/api/cluster/task/a1.replay-1")
    assert new["status"] == "queued" and new["replay_of"] == "a1" and new["attempts"] == 0
    status, old = await call(gateway, "GET", "/api/cluster/task/a1")
    assert old["status"] == "dead" and old["replayed_as"] == "a1.replay-1"
    raw = await js.get_msg(names.tasks_stream, 1)
    assert raw.headers is not None and raw.headers[MSG_ID_HEADER] == "a1.replay-1"
    body = codec.loads(raw.data or b"")
    assert body["task_id"] == "a1.replay-1" and body["input"] == {"n": 1}
    # and a second replay of it is a 409 naming the new id; an unknown id a 404
    status, again = await call(gateway, "POST", "/api/cluster/dead/a1/replay")
    assert status == 409 and again["error"] == "already_replayed"
    assert again["new_task_id"] == "a1.replay-1"
    status, _ = await call(gateway, "POST", "/api/cluster/dead/nobody/replay")
    assert status == 404
    # and a replay that died is replayed under the same stem, with the next number
    status, rep = await call(gateway, "POST", "/api/cluster/dead/x.replay-1/replay")
    assert status == 202 and rep["new_task_id"] == "x.replay-2", rep
    # and a letter whose type left the fleet is not replayed
    status, body = await call(gateway, "POST", "/api/cluster/dead/ghost/replay")
    assert status == 409 and body["error"] == "not_in_fleet"

    # When the coder letters are replayed in bulk, twice
    status, bulk = await call(gateway, "POST", "/api/cluster/dead/replay?agent_type=coder")
    status2, twice = await call(gateway, "POST", "/api/cluster/dead/replay?agent_type=coder")
    # Then only the one not replayed yet goes, once; its plain text payload as it was
    assert status == 202 and bulk["count"] == 1 and bulk["already_replayed"] == 2, bulk
    assert bulk["letters"] == [{"task_id": "a2", "dead_seq": 2, "new_task_id": "a2.replay-1"}]
    assert status2 == 202 and twice["count"] == 0 and twice["already_replayed"] == 3
    raw = await js.get_msg(names.tasks_stream, 3)
    assert raw.data == b"poison text" and raw.headers == {MSG_ID_HEADER: "a2.replay-1"}
    assert (await js.stream_info(names.tasks_stream)).state.messages == 3
    # and a dry run over everything counts what is left, skipping the type not in the fleet
    status, rest = await call(gateway, "POST", "/api/cluster/dead/replay?dry_run=1")
    assert rest["count"] == 2 and rest["not_in_fleet"] == 1 and rest["already_replayed"] == 3
    # and the listing shows what each letter was replayed as
    status, listed = await call(gateway, "GET", "/api/cluster/dead?agent_type=coder")
    shown = {d["task_id"]: d["replayed_as"] for d in listed["dead_letters"]}
    assert shown == {"a1": "a1.replay-1", "a2": "a2.replay-1", "x.replay-1": "x.replay-2"}
    # and every replay was announced as queued, naming its original
    await eventually(lambda: len(queued) == 3, 5)
    assert {(e["task_id"], e["replay_of"]) for e in queued} == {
        ("a1.replay-1", "a1"), ("x.replay-2", "x.replay-1"), ("a2.replay-1", "a2")}  # fmt: skip
    # and the replays are audit records in the heal history
    status, history = await call(gateway, "GET", "/api/cluster/heal/history")
    audits = [(e["action"], e["status"]) for e in history["events"] if e["kind"] == "heal.audit"]
    assert ("replay", 202) in audits and ("replay", 409) in audits, audits
    bulk_audits = [e for e in history["events"] if e.get("action") == "replay_all"]
    assert {e["count"] for e in bulk_audits} >= {0, 1, 2}, bulk_audits


def foundry_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foundry.cli", *args], env=env, cwd=ROOT,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_a_dead_task_runs_again_once_fixed_through_the_cli(
    make_settings: Any, api_tokens: ApiTokens, procs: ProcessGroup, nc: NATS, tmp_path: Path
) -> None:
    # Given a healer running gateway, monitor, a coder whose handler is broken while a file
    # exists (it retries until max_deliver, then the task is dead-lettered) and a critic
    # whose tasks nap
    settings = make_settings(
        fleet={"coder": 1, "critic": 1},
        handlers={"coder": "tests.handlers:broken_while", "critic": "tests.handlers:record"},
        max_deliver=2, gateway_port=free_port(), healer_port=free_port(),
        monitor_port=free_port(),
    )  # fmt: skip
    broken, marks = tmp_path / "broken", tmp_path / "marks"
    broken.touch()
    marks.mkdir()
    start_healer(procs, settings, "--services", "gateway,monitor")
    await wait_running(nc, settings, timeout=45)
    base = f"http://127.0.0.1:{settings.gateway_port}"
    env = child_env(settings, FOUNDRY_GATEWAY_URL=base, FOUNDRY_API_TOKEN=api_tokens.admin)

    def cli(*args: str) -> Any:
        return asyncio.to_thread(foundry_cli, env, *args)

    async with ClientSession(headers=api_tokens.header(api_tokens.admin)) as http:

        async def get(path: str) -> Any:
            try:
                async with http.get(base + path) as resp:
                    return await resp.json() if resp.status == 200 else None
            except OSError:
                return None

        await eventually(lambda: get("/health"), 30, interval=0.2)
        task = {"agent_type": "coder", "description": "fragile", "task_id": "job-1",
                "input": {"broken": str(broken), "marks": str(marks)}}  # fmt: skip
        async with http.post(f"{base}/api/cluster/task/submit", json=task) as resp:
            assert resp.status == 202
        # When it exhausts its deliveries, Then it is dead and `foundry dead` lists it
        record = await get("/api/cluster/task/job-1?wait=30")
        assert record["status"] == "dead" and record["attempts"] == 2, (record, procs.logs())
        listed = await cli("dead", "--type", "coder")
        assert listed.returncode == 0, listed.stderr
        assert "job-1" in listed.stdout and "max_deliver" in listed.stdout, listed.stdout
        dry = await cli("replay", "--all", "--dry-run")
        assert dry.returncode == 0 and "would replay 1" in dry.stdout, dry.stdout + dry.stderr
        # When the handler is fixed and the task replayed with `foundry replay`
        broken.unlink()
        out = await cli("replay", "job-1")
        assert out.returncode == 0 and "job-1 replayed as job-1.replay-1" in out.stdout, out
        # Then the replay completes on its first attempt, and both records show the lineage
        again = await get("/api/cluster/task/job-1.replay-1?wait=30")
        assert again["status"] == "completed" and again["attempts"] == 1, again
        assert again["replay_of"] == "job-1" and again["result"]["fixed"] is True
        assert (await get("/api/cluster/task/job-1"))["replayed_as"] == "job-1.replay-1"
        runs = sorted(p.name.split(".run.")[0] for p in marks.iterdir())
        assert runs == ["job-1", "job-1", "job-1.replay-1"], runs
        # and replaying it again is refused, naming the replay
        twice = await cli("replay", "job-1")
        assert twice.returncode != 0 and "job-1.replay-1" in twice.stderr, twice

        # When a napping critic task is cancelled with `foundry cancel`
        nap = {"agent_type": "critic", "description": "nap", "task_id": "nap-1",
               "input": {"sleep": 60}}  # fmt: skip
        async with http.post(f"{base}/api/cluster/task/submit", json=nap) as resp:
            assert resp.status == 202

        async def running() -> bool:
            found = await get("/api/cluster/task/nap-1")
            return bool(found) and found["status"] == "running"

        await eventually(running, 20)
        stop = await cli("cancel", "nap-1")
        assert stop.returncode == 0 and "nap-1: cancelling" in stop.stdout, stop
        # Then it ends cancelled; a finished task's cancel fails saying why
        assert (await get("/api/cluster/task/nap-1?wait=10"))["status"] == "cancelled"
        late = await cli("cancel", "job-1.replay-1")
        assert late.returncode != 0 and "409" in late.stderr and "completed" in late.stderr

        # and the monitor counted the replay and the cancel
        metrics = f"http://127.0.0.1:{settings.monitor_port}/metrics"

        async def counted() -> bool:
            async with http.get(metrics) as resp:
                text = await resp.text()
            replayed = 'foundry_dead_letters_replayed_total{agent_type="coder"} 1.0'
            cancelled = 'foundry_tasks_cancelled_total{agent_type="critic"} 1.0'
            return replayed in text and cancelled in text

        await eventually(counted, 10, interval=0.2)


async def test_replays_racing_for_one_letter_make_one_task(
    gateway: Gateway, nc: NATS, settings: Settings
) -> None:
    # Given one dead letter
    await put_letter(nc, settings, "race-1", "coder", DELIVERED, '{"description": "r"}')
    # When five replays of it arrive at once, beside two bulk replays
    single = [call(gateway, "POST", "/api/cluster/dead/race-1/replay") for _ in range(5)]
    bulk = [call(gateway, "POST", "/api/cluster/dead/replay") for _ in range(2)]
    answers = await asyncio.gather(*single, *bulk)
    # Then exactly one of them published it, and every refusal names that task
    made = [b["new_task_id"] for s, b in answers[:5] if s == 202]
    made += [letter["new_task_id"] for _, b in answers[5:] for letter in b["letters"]]
    assert made == ["race-1.replay-1"], answers
    refused = [b for s, b in answers[:5] if s == 409]
    assert all(b["new_task_id"] == "race-1.replay-1" for b in refused), refused
    info = await nc.jetstream().stream_info(settings.names.tasks_stream)
    assert info.state.messages == 1
