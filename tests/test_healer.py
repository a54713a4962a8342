"""The healer: dead and hung workers replaced, crash loops contained, poison dead-lettered."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from foundry import codec
from foundry.settings import Settings
from tests.cluster import slots, start_healer, wait_running, watch
from tests.conftest import Gateway, eventually
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task


def healer_settings(make_settings: Any, **kw: Any) -> Settings:
    base = {
        "fleet": {"coder": 1},
        "max_restarts": 5,
        "restart_window": 60.0,
        "handlers": {"coder": "echo"},
    }
    base.update(kw)
    settings: Settings = make_settings(**base)
    return settings


async def test_kill9_idle_worker_gets_a_new_pid_for_the_same_slot(
    make_settings: Any, nc: NATS, procs: ProcessGroup
) -> None:
    settings = healer_settings(make_settings, fleet={"coder": 2})
    start_healer(procs, settings)
    async with watch(nc, settings) as events:
        before = await wait_running(nc, settings)
        old_pid = before["coder-0@host-a"]["pid"]
        # When the idle worker of slot coder-0 is killed with SIGKILL
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        # Then a new pid heartbeats for the same slot, and a relaunch event says why
        beat = await eventually(
            lambda: next(
                (
                    b
                    for b in events.beats
                    if b["worker_id"] == "coder-0@host-a" and b["pid"] != old_pid
                ),
                None,
            ),
            20,
        )
        replaced_in = time.monotonic() - killed_at
        relaunch = events.of("relaunch", slot="coder-0@host-a")
        assert relaunch and relaunch[0]["old_pid"] == old_pid
        assert relaunch[0]["signal"] == signal.SIGKILL and relaunch[0]["reason"] == "exit"
        assert beat["slot"] == 0 and beat["agent_type"] == "coder"
        after = await slots(nc, settings)
        assert (
            after["coder-1@host-a"]["pid"] == before["coder-1@host-a"]["pid"]
        )  # the other slot untouched
        print(f"kill -9 → new heartbeat in {replaced_in:.3f}s")


async def test_sigstopped_worker_is_replaced_and_its_late_result_does_not_override(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker outside the healer's fleet holding a task, and a healer with its own worker
    settings = healer_settings(
        make_settings, handlers={"coder": "tests.handlers:block"}, ack_wait=30.0
    )
    gw = await make_gateway(settings)
    release, marks = tmp_path / "release", tmp_path / "marks"
    marks.mkdir()
    foreign = procs.worker(settings, "coder", "--worker-id", "visitor-1")
    await submit(
        gw,
        agent_type="coder",
        description="hold",
        task_id="late-1",
        input={"release": str(release), "marks": str(marks)},
    )
    await eventually(lambda: list(marks.glob("late-1.start.*")), 20)
    start_healer(procs, settings)
    await wait_running(nc, settings)
    async with watch(nc, settings) as events:
        # When the foreign worker is SIGSTOPped mid-task (its work could still finish later)
        os.kill(foreign.pid, signal.SIGSTOP)
        release.touch()
        # Then the healer notices the silence and the task is redelivered, well before ack_wait
        rec = await wait_task(gw, "late-1", wait=20)
        assert rec["status"] == "completed", procs.logs()
        assert rec["result"]["pid"] != foreign.pid and rec["attempts"] == 2
        assert events.of("silent_foreign", worker_id="visitor-1")
        # When the stopped worker continues and finishes its copy of the task
        os.kill(foreign.pid, signal.SIGCONT)
        await eventually(lambda: len(list(marks.glob("late-1.start.*"))) == 2, 5)
        await asyncio.sleep(1.0)
        # Then its late result does not override the redelivery's
        again = await wait_task(gw, "late-1", wait=0)
        assert again["result"] == rec["result"] and again["worker_id"] == rec["worker_id"]
        assert foreign.poll() is None


async def test_sigstopped_slot_worker_is_killed_and_relaunched(
    make_settings: Any, nc: NATS, procs: ProcessGroup
) -> None:
    settings = healer_settings(make_settings)
    start_healer(procs, settings)
    before = await wait_running(nc, settings)
    pid = before["coder-0@host-a"]["pid"]
    async with watch(nc, settings) as events:
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        beat = await eventually(
            lambda: next(
                (b for b in events.beats if b["worker_id"] == "coder-0@host-a" and b["pid"] != pid),
                None,
            ),
            30,
        )
        took = time.monotonic() - stopped_at
        kill = events.of("kill_silent", slot="coder-0@host-a")
        assert kill and kill[0]["pid"] == pid
        assert kill[0]["silent_seconds"] >= settings.silence_timeout
        relaunch = events.of("relaunch", slot="coder-0@host-a", reason="silent")
        assert relaunch and relaunch[0]["detect_seconds"] >= settings.silence_timeout
        assert beat["pid"] != pid
        print(f"SIGSTOP → replaced in {took:.3f}s (silence timeout {settings.silence_timeout}s)")


async def test_kill9_under_load_loses_nothing(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given two workers running a stream of short tasks
    settings = healer_settings(
        make_settings,
        fleet={"coder": 2},
        ack_wait=10.0,
        handlers={"coder": "tests.handlers:record"},
        max_restarts=50,
    )
    gw = await make_gateway(settings)
    marks = tmp_path / "marks"
    marks.mkdir()
    start_healer(procs, settings)
    await wait_running(nc, settings)
    ids = [f"load-{i}" for i in range(150)]

    async def feed() -> None:
        for tid in ids:
            await submit(
                gw,
                agent_type="coder",
                description="x",
                task_id=tid,
                input={"marks": str(marks), "sleep": 0.02},
            )
            await asyncio.sleep(0.005)

    # When workers are killed with SIGKILL repeatedly while tasks flow
    feeder = asyncio.create_task(feed())
    kills = 0
    for _ in range(6):
        await asyncio.sleep(0.4)
        current = await slots(nc, settings)
        pid = current[random.choice(["coder-0@host-a", "coder-1@host-a"])]["pid"]
        if pid:
            os.kill(pid, signal.SIGKILL)
            kills += 1
    await feeder
    # Then every task reaches a final status: none lost
    records = await asyncio.gather(*(wait_task(gw, tid, wait=60) for tid in ids))
    assert [r["status"] for r in records] == ["completed"] * len(ids), procs.logs()
    runs: dict[str, int] = {}
    for mark in marks.iterdir():
        runs[mark.name.split(".")[0]] = runs.get(mark.name.split(".")[0], 0) + 1
    duplicates = sum(n - 1 for n in runs.values())
    # Duplicate executions happen only for tasks in flight at a kill (concurrency per worker)
    assert duplicates <= kills * settings.concurrency
    print(f"{len(ids)} tasks, {kills} kills, {duplicates} duplicate executions, 0 lost")


async def test_crash_loop_backs_off_then_quarantines_and_release_brings_it_back(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given a worker whose handler module fails at import while a flag file exists
    flag = tmp_path / "crash-flag"
    flag.touch()
    settings = healer_settings(
        make_settings, max_restarts=3, handlers={"coder": "tests.crashy:handler"}
    )
    gw = await make_gateway(settings)
    async with watch(nc, settings) as events:
        start_healer(procs, settings, CRASHY_FLAG=str(flag))
        # Then the relaunches back off, growing, and the slot is quarantined with the error
        quarantine = await eventually(lambda: events.of("quarantine", slot="coder-0@host-a"), 40)
        relaunches = events.of("relaunch", slot="coder-0@host-a")
        backoffs = [e["backoff_seconds"] for e in relaunches]
        assert backoffs == sorted(backoffs) and backoffs[0] == 0.0 and backoffs[-1] > 0
        times = [e["died_at"] for e in relaunches]
        launched = [e["at"] for e in relaunches]
        gaps = [b - a for a, b in zip(times, launched, strict=True)]
        assert gaps[-1] > gaps[0]
        assert "crashy: refusing to start" in quarantine[0]["last_error"]
        assert quarantine[0]["restarts"] == settings.max_restarts + 1
        # and it stays down, visible as quarantined
        async with gw.http.get(gw.url("/api/cluster/agents/live")) as resp:
            rows = {r["worker_id"]: r for r in (await resp.json())["agents"]}
        assert rows["coder-0@host-a"]["status"] == "quarantined"
        # When the cause is fixed and an operator releases the slot
        flag.unlink()
        async with gw.http.post(gw.url("/api/cluster/workers/coder-0@host-a/release")) as resp:
            assert resp.status == 200, await resp.text()
        # Then it comes back and heartbeats
        await wait_running(nc, settings)
        assert events.of("release", slot="coder-0@host-a")
        async with gw.http.post(gw.url("/api/cluster/workers/coder-0@host-a/release")) as resp:
            assert resp.status == 409
        async with gw.http.post(gw.url("/api/cluster/workers/nobody-9/release")) as resp:
            assert resp.status == 404


async def test_poison_task_is_dead_lettered_while_others_complete(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Given one worker whose handler kills the process on a poison task, and max_restarts
    # lower than the poison kill count, to show the slot is not quarantined for it
    settings = healer_settings(
        make_settings, handlers={"coder": "tests.handlers:crash"}, max_restarts=2, poison_kills=3
    )
    gw = await make_gateway(settings)
    # and the poison task queued together with good ones, so the first fetch takes them all
    # and the good ones run beside the poison task when it kills the worker
    await submit(gw, agent_type="coder", description="poison", task_id="poison-1")
    good = [f"good-{i}" for i in range(5)]
    for tid in good:
        await submit(gw, agent_type="coder", description="fine", task_id=tid)
    async with watch(nc, settings) as events:
        start_healer(procs, settings)
        # Then the poison task ends dead with evidence, the bystanders complete
        rec = await wait_task(gw, "poison-1", wait=60)
        assert rec["status"] == "dead", (rec, procs.logs())
        evidence = rec["result"]["evidence"]
        assert len(evidence) == 3 and all(e["exit_code"] == 13 for e in evidence)
        assert {"worker_id", "rss_bytes", "pid"} <= set(evidence[0])
        for tid in good:
            assert (await wait_task(gw, tid, wait=30))["status"] == "completed"
        assert [e["task_id"] for e in events.of("poison")] == ["poison-1"]
        assert not events.of("quarantine")
        assert (await slots(nc, settings))["coder-0@host-a"]["state"] != "quarantined"
        await wait_running(nc, settings)  # it may still be starting after the last death
    # and the dead-letter stream holds it with the evidence
    js = nc.jetstream()
    dead = await js.get_last_msg(settings.names.dead_stream, settings.names.dead("coder"))
    body = codec.loads(dead.data or b"{}")
    assert body["task_id"] == "poison-1" and body["payload"]


async def test_max_deliver_exhausted_is_dead_lettered(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    settings = healer_settings(
        make_settings, handlers={"coder": "tests.handlers:retry_always"}, max_deliver=2
    )
    from foundry.provision import provision

    await provision(nc.jetstream(), settings)
    gw = await make_gateway(settings)
    start_healer(procs, settings)
    await submit(gw, agent_type="coder", description="never", task_id="md-1")
    rec = await wait_task(gw, "md-1", wait=30)
    assert rec["status"] == "dead", procs.logs()
    assert "FOUNDRY_MAX_DELIVER" in rec["error"]


async def test_heal_endpoints(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    settings = healer_settings(make_settings, fleet={"coder": 1, "critic": 1})
    gw: Gateway = await make_gateway(settings)
    # Without a healer, heal says so with a 503
    async with gw.http.post(gw.url("/api/cluster/heal")) as resp:
        assert resp.status == 503 and (await resp.json())["error"] == "healer_unavailable"
    start_healer(procs, settings)
    before = await wait_running(nc, settings)
    os.kill(before["critic-0@host-a"]["pid"], signal.SIGKILL)
    await eventually(lambda: _relaunched(nc, settings, before), 20)
    async with gw.http.post(gw.url("/api/cluster/heal")) as resp:
        body = await resp.json()
        assert resp.status == 200 and set(body) >= {"healed_workers", "count", "message"}
    async with gw.http.get(gw.url("/api/cluster/status")) as resp:
        status = await resp.json()
        assert status["total_workers"] == 2 and status["healer"] == "running"
        assert status["healthy_workers"] + status["unhealthy_workers"] == 2
    # history: newest first, paged
    async with gw.http.get(gw.url("/api/cluster/heal/history"), params={"limit": "5"}) as resp:
        hist = await resp.json()
    # the newest is the audit record of the heal request, naming the token that asked
    audit = hist["events"][0]
    assert audit["kind"] == "heal.audit" and audit["action"] == "heal", audit
    assert audit["token"] == "test-admin" and audit["status"] == 200
    relaunch = next(e for e in hist["events"] if e["kind"] != "heal.audit")
    assert relaunch["kind"] == "heal.relaunch" and relaunch["slot"] == "critic-0@host-a"
    ats = [e["at"] for e in hist["events"]]
    assert ats == sorted(ats, reverse=True)
    async with gw.http.get(gw.url("/api/cluster/heal/history"), params={"limit": "0"}) as resp:
        assert resp.status == 400


async def _relaunched(nc: NATS, settings: Settings, before: dict[str, Any]) -> bool:
    now = await slots(nc, settings)
    return bool(
        now["critic-0@host-a"]["pid"] != before["critic-0@host-a"]["pid"]
        and now["critic-0@host-a"]["state"] == "running"
    )


async def test_restarted_healer_never_duplicates_a_slot(
    make_settings: Any, nc: NATS, procs: ProcessGroup
) -> None:
    settings = healer_settings(make_settings, fleet={"coder": 2})
    first = start_healer(procs, settings)
    before = await wait_running(nc, settings)
    # When the healer is killed with SIGKILL while its workers run, and started again
    os.kill(first.pid, signal.SIGKILL)
    first.wait(5)
    start_healer(procs, settings)
    after = await wait_running(nc, settings)
    # Then the old workers were replaced, not duplicated
    old_pids = [before[name]["pid"] for name in ("coder-0@host-a", "coder-1@host-a")]
    for name, old in zip(("coder-0@host-a", "coder-1@host-a"), old_pids, strict=True):
        assert after[name]["pid"] != old
    await eventually(lambda: not any(_alive(pid) for pid in old_pids), 10)
    async with watch(nc, settings) as events:
        await asyncio.sleep(1.0)
        pids = {(b["worker_id"], b["pid"]) for b in events.beats}
    assert len(pids) == 2, pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_bad_fleet_refused_naming_the_variable(
    make_settings: Any, procs: ProcessGroup
) -> None:
    settings = make_settings()
    for bad in ("coder=-1", "coder", "co.der=1", "coder=x"):
        proc = start_healer(procs, settings, FOUNDRY_FLEET=bad)
        assert await asyncio.to_thread(proc.wait, 20) == 2
    assert "FOUNDRY_FLEET" in procs.logs()
