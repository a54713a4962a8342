"""Host remediation: disk sweep, memory recycle, embedded server restart, CPU throttle, dry run."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from foundry.contracts import HostSample
from foundry.embedded import prepare as prepare_embedded
from foundry.errors import ConfigError
from foundry.servers import free_port, port_open
from foundry.settings import Settings
from healer.remediation.disk import check_clean_paths, sweep
from tests.cluster import slots, start_healer, wait_running, watch
from tests.conftest import eventually
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task

HOUR = 3600.0


def fill(root: Path) -> dict[str, Path]:
    """Old and young files inside, a file outside, a symlink (and a linked dir) leading out."""
    inside, outside = root / "clean", root / "outside"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    files = {
        "old1": inside / "old1.log",
        "old2": inside / "sub" / "old2.log",
        "young": inside / "young.log",
        "outside": outside / "keep.dat",
    }
    for path in files.values():
        path.write_bytes(b"x" * 4096)
    past = time.time() - 2 * HOUR
    for key in ("old1", "old2", "outside"):
        os.utime(files[key], (past, past))
    link = inside / "link-out"
    link.symlink_to(files["outside"])
    (inside / "dir-out").symlink_to(outside, target_is_directory=True)
    os.utime(link, (past, past), follow_symlinks=False)
    files["link"] = link
    return files


def test_sweep_removes_only_old_files_inside_and_never_follows_links(tmp_path: Path) -> None:
    files = fill(tmp_path)
    # threshold far below any real usage: the sweep deletes every old file it may
    report = sweep(tmp_path / "clean", threshold=0.0001, min_age=HOUR)
    assert not files["old1"].exists() and not files["old2"].exists()
    assert files["young"].exists()
    assert files["outside"].exists()  # neither the file outside nor the link's target
    assert files["link"].is_symlink()  # links themselves are left alone
    assert report.files_deleted == 2 and report.bytes_freed == 2 * 4096


def _sweep_as_nobody(root: Path) -> tuple[int, list[str]]:
    """Run the sweep in a forked child that drops root (no-op drop when not root)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            report = sweep(root, 0.0001, HOUR)
            os.write(write_end, json.dumps([report.files_deleted, report.errors]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    deleted, errors = json.loads(data)
    return int(deleted), list(errors)


def test_sweep_records_permission_errors_and_continues() -> None:
    # Given a tree owned by an unprivileged user, with one folder it may not write to
    # (as root, the sweep itself runs as that user: root ignores directory permissions)
    root = Path(tempfile.mkdtemp(prefix="foundry-sweep-"))
    try:
        root.chmod(0o755)
        files = fill(root)
        if os.geteuid() == 0:
            for path in [root, *root.rglob("*")]:
                os.chown(path, 65534, 65534, follow_symlinks=False)
        (root / "clean" / "sub").chmod(0o500)
        deleted, errors = _sweep_as_nobody(root / "clean")
        # Then the error is recorded and the sweep went on with the rest
        assert deleted == 1 and not files["old1"].exists()
        assert files["old2"].exists() and "old2.log" in errors[0]
    finally:
        (root / "clean" / "sub").chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)


def test_dangerous_clean_paths_are_refused(make_settings: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for bad in (Path("/"), tmp_path, data, data / "nats", data / "redis" / "x"):
        with pytest.raises(ConfigError, match="FOUNDRY_CLEAN_PATHS"):
            check_clean_paths(make_settings(data_dir=data, clean_paths=(bad,)))
    ok = data / "logs"
    ok.mkdir(parents=True)
    missing = tmp_path / "nope"
    assert check_clean_paths(make_settings(data_dir=data, clean_paths=(ok, missing))) == [ok]


def remediation_settings(make_settings: Any, **kw: Any) -> Settings:
    base = {
        "fleet": {"coder": 1},
        "handlers": {"coder": "echo"},
        "host_interval": 0.3,
        "remediation_cooldown": 0.0,
    }
    base.update(kw)
    settings: Settings = make_settings(**base)
    return settings


async def test_healer_cleans_the_disk_and_reports_bytes_freed(
    make_settings: Any, nc: NATS, procs: ProcessGroup, tmp_path: Path
) -> None:
    files = fill(tmp_path)
    settings = remediation_settings(
        make_settings, clean_paths=(tmp_path / "clean",), disk_threshold=0.0001, clean_min_age=HOUR
    )
    async with watch(nc, settings) as events:
        start_healer(procs, settings)
        event = await eventually(lambda: events.of("remediate", policy="disk"), 30)
    assert event[0]["outcome"] == "done" and event[0]["after"]["bytes_freed"] == 2 * 4096
    assert event[0]["before"]["disk_percent"] > 0
    assert not files["old1"].exists() and files["young"].exists() and files["outside"].exists()


async def test_dry_run_records_and_changes_nothing(
    make_settings: Any, nc: NATS, procs: ProcessGroup, tmp_path: Path
) -> None:
    files = fill(tmp_path)
    settings = remediation_settings(
        make_settings,
        clean_paths=(tmp_path / "clean",),
        disk_threshold=0.0001,
        clean_min_age=HOUR,
        remediation_dry_run=True,
        worker_max_rss=1,
    )
    async with watch(nc, settings) as events:
        start_healer(procs, settings)
        before = await wait_running(nc, settings)
        await eventually(
            lambda: (
                events.of("remediate", policy="disk") and events.of("remediate", policy="memory")
            ),
            30,
        )
        await asyncio.sleep(1.0)
    assert {e["outcome"] for e in events.of("remediate")} == {"dry_run"}
    assert all(path.exists() for path in files.values())
    after = await slots(nc, settings)
    assert after["coder-0@host-a"]["pid"] == before["coder-0@host-a"]["pid"]  # no recycle happened


async def test_worker_over_max_rss_is_recycled_after_its_task_completes(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    settings = remediation_settings(
        make_settings, handlers={"coder": "tests.handlers:grow"}, worker_max_rss=160 * 1024 * 1024
    )
    gw = await make_gateway(settings)
    async with watch(nc, settings) as events:
        start_healer(procs, settings)
        before = await wait_running(nc, settings)
        # When a task makes the worker grow past FOUNDRY_WORKER_MAX_RSS
        await submit(
            gw,
            agent_type="coder",
            description="grow",
            task_id="grow-1",
            input={"mb": 200, "sleep": 1.5},
        )
        relaunch = await eventually(lambda: events.of("relaunch", reason="recycle"), 40)
        await eventually(lambda: events.of("remediate", policy="memory"), 20)
    # Then it is recycled only after the in-flight task completed, and comes back
    rec = await wait_task(gw, "grow-1", wait=10)
    assert rec["status"] == "completed" and rec["attempts"] == 1, procs.logs()
    assert rec["result"]["pid"] == before["coder-0@host-a"]["pid"]
    remediate = events.of("remediate", policy="memory")
    assert remediate[0]["outcome"] == "done" and remediate[0]["before"]["rss_bytes"] > 160 << 20
    assert relaunch[0]["old_pid"] == before["coder-0@host-a"]["pid"]
    assert rec["finished_at"] <= relaunch[0]["at"]
    after = await wait_running(nc, settings)
    assert after["coder-0@host-a"]["pid"] != before["coder-0@host-a"]["pid"]


async def test_killed_embedded_redis_is_restarted_and_tasks_keep_completing(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    port = free_port()
    settings = remediation_settings(make_settings, redis_url=f"redis://127.0.0.1:{port}/0")
    # (the embedded redis-server's generated password, as the healer will use it)
    settings = prepare_embedded(settings, ["redis"])
    start_healer(procs, settings, "--embedded", "redis")
    await eventually(lambda: port_open("127.0.0.1", port), 30)
    gw = await make_gateway(settings)
    await wait_running(nc, settings)
    await submit(gw, agent_type="coder", description="before", task_id="rk-1")
    assert (await wait_task(gw, "rk-1"))["status"] == "completed"
    async with watch(nc, settings) as events:
        # When the embedded redis-server is killed
        pid = json.loads((settings.data_dir / "run" / "redis-server.json").read_text())["pid"]
        os.kill(pid, 9)
        await eventually(lambda: events.of("relaunch", slot="redis-server"), 20)
    # Then it is back and tasks keep completing
    await eventually(lambda: port_open("127.0.0.1", port), 20)
    for i in range(3):
        await submit(gw, agent_type="coder", description="after", task_id=f"rk-after-{i}")
    for i in range(3):
        assert (await wait_task(gw, f"rk-after-{i}", wait=30))["status"] == "completed"


async def test_hot_cpu_throttles_the_busiest_type_and_restores_it(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    settings = remediation_settings(
        make_settings,
        fleet={"coder": 1, "critic": 1},
        handlers={"coder": "echo", "critic": "echo"},
        cpu_threshold=50.0,
        cpu_samples=2,
        concurrency=8,
    )
    host = settings.host_id

    async def publish(cpu: float) -> None:
        sample = HostSample(host, time.time(), cpu, 0.1, memory_percent=1.0, swap_percent=0.0)
        await nc.publish(settings.names.host(host), sample.to_payload())

    async with watch(nc, settings) as events:
        start_healer(procs, settings)
        await wait_running(nc, settings)
        # When the host reports a hot CPU for several samples
        for _ in range(60):
            await publish(99.0)
            await asyncio.sleep(0.2)
            if events.of("remediate", policy="cpu", step="throttle"):
                break
        throttle = events.of("remediate", policy="cpu", step="throttle")
        assert throttle and throttle[0]["after"]["concurrency"] == 4
        target = throttle[0]["target"]
        # Then that type's workers run at the lower concurrency (seen in heartbeats)
        await eventually(
            lambda: any(
                b["agent_type"] == target and b["concurrency"] == 4 for b in events.beats[-10:]
            ),
            10,
        )
        # and the cluster status shows the host sample and the remediation state
        gw = await make_gateway(settings)
        async with gw.http.get(gw.url("/api/cluster/status")) as resp:
            status = await resp.json()
        assert status["host"]["cpu_percent"] == 99.0 and status["host"]["host"] == host
        assert status["remediation"]["policies"]["cpu"]["throttled"] == {target: 4}
        assert status["remediation"]["dry_run"] is False
        # When it cools down, the default comes back
        for _ in range(60):
            await publish(5.0)
            await asyncio.sleep(0.2)
            if events.of("remediate", policy="cpu", step="restore"):
                break
        assert events.of("remediate", policy="cpu", step="restore", target=target)
        await eventually(
            lambda: any(
                b["agent_type"] == target and b["concurrency"] == 8 for b in events.beats[-10:]
            ),
            10,
        )


async def test_hung_embedded_redis_is_restarted_after_failed_probes(
    make_settings: Any, nc: NATS, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given a healer running an embedded redis-server that stops answering (SIGSTOP: alive,
    # port open, no replies)
    port = free_port()
    settings = remediation_settings(
        make_settings, redis_url=f"redis://127.0.0.1:{port}/0", probe_failures=2
    )
    settings = prepare_embedded(settings, ["redis"])
    start_healer(procs, settings, "--embedded", "redis")
    await eventually(lambda: port_open("127.0.0.1", port), 30)
    await wait_running(nc, settings)
    pid = json.loads((settings.data_dir / "run" / "redis-server.json").read_text())["pid"]
    async with watch(nc, settings) as events:
        os.kill(pid, signal.SIGSTOP)
        # Then after FOUNDRY_PROBE_FAILURES failed probes the healer restarts it
        restart = await eventually(lambda: events.of("remediate", policy="reachability"), 40)
    assert restart[0]["step"] == "restart" and restart[0]["outcome"] == "done"
    assert restart[0]["after"]["old_pid"] == pid and restart[0]["after"]["new_pid"] != pid
    # and tasks complete again
    gw = await make_gateway(settings)
    await submit(gw, agent_type="coder", description="after", task_id="hung-after-1")
    assert (await wait_task(gw, "hung-after-1", wait=30))["status"] == "completed"
