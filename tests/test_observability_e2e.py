"""End to end: a healer-run cluster, a real Prometheus scraping it with monitor/prometheus.yml
(ports rewritten), traffic with failures, a dead letter and a kill -9; then every dashboard
panel's PromQL returns data."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from foundry.connect import connect_nats
from foundry.servers import free_port
from foundry.settings import LlmSettings, Rate, Settings
from tests import dashboards
from tests.bus import AuthNats
from tests.cluster import slots, start_healer, wait_running, watch
from tests.conftest import ApiTokens, eventually
from tests.procs import ProcessGroup
from tests.prom import Prometheus, config_for_test, require

COMPLETED_6 = 'sum(foundry_tasks_completed_total{agent_type="coder"}) >= 6'
FOUNDRY_JOBS = {"foundry-gateway", "foundry-monitor", "foundry-healer"}


class Http:
    def __init__(self, session: ClientSession, settings: Settings) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{settings.gateway_port}"

    async def ok(self, url: str) -> bool:
        try:
            async with self.session.get(url) as resp:
                return resp.status == 200
        except OSError:
            return False

    async def submit(self, agent_type: str, task_id: str) -> None:
        body = {"agent_type": agent_type, "description": "observed", "task_id": task_id}
        async with self.session.post(f"{self.base}/api/cluster/task/submit", json=body) as r:
            assert r.status == 202, await r.text()

    async def final(self, task_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base}/api/cluster/task/{task_id}?wait=30") as r:
            assert r.status == 200, await r.text()
            out: dict[str, Any] = await r.json()
            return out


async def test_every_dashboard_panel_returns_data_from_a_real_prometheus(
    make_settings: Callable[..., Settings],
    procs: ProcessGroup,
    tmp_path: Path,
    api_tokens: ApiTokens,
) -> None:
    require("prometheus")
    # Given nats-server with its monitoring port, and a healer running gateway, monitor and
    # a fleet where critic tasks fail and deployer tasks exhaust their deliveries, with a
    # disk threshold every disk exceeds (in dry run: a remediation event, nothing deleted)
    nats_http = free_port()
    nats = AuthNats(tmp_path / "nats", http_port=nats_http).start()
    settings = make_settings(
        bus=nats,
        nats_monitor_url=f"http://127.0.0.1:{nats_http}",
        fleet={"coder": 2, "critic": 1, "deployer": 1},
        handlers={"coder": "echo", "critic": "tests.handlers:fail",
                  "deployer": "tests.handlers:retry_always"},
        max_deliver=2, host_interval=0.5, watch_paths=(tmp_path,),
        # any disk is "full": a dry-run clean every second (the first comes before the monitor)
        disk_threshold=0.1, remediation_dry_run=True, remediation_cooldown=1.0,
        gateway_port=free_port(), healer_port=free_port(), monitor_port=free_port(),
        # a limit and a model configured: the limit and token panels show them from the start
        rate_limits={"coder": Rate(1000, 1.0)}, llm=LlmSettings(model="test-model"),
    )  # fmt: skip
    # and a scrape token for the gateway's /metrics (scope metrics), as compose makes one
    token_file = tmp_path / "metrics.token"
    token_file.write_text(api_tokens.make("prometheus", "metrics") + "\n")
    config = config_for_test(settings, prom_port=free_port(), token_file=token_file)
    prom = Prometheus(config, tmp_path / "prometheus")
    nc = await connect_nats(settings, "test")
    session = ClientSession(headers=api_tokens.header(api_tokens.admin))
    try:
        start_healer(procs, settings, "--services", "gateway,monitor")
        await wait_running(nc, settings, timeout=45)
        http = Http(session, settings)
        await eventually(lambda: http.ok(f"{http.base}/health"), 30, interval=0.2)
        monitor = f"http://127.0.0.1:{settings.monitor_port}/health"
        await eventually(lambda: http.ok(monitor), 30, interval=0.2)
        # and Prometheus scraping them every second with monitor/prometheus.yml
        await asyncio.to_thread(prom.start)
        await eventually(lambda: _targets_up(prom), 30, interval=0.5)

        # When tasks complete, fail and die, an unknown route is asked for, and a worker
        # is killed with SIGKILL
        async with watch(nc, settings) as events:
            ids = [(t, f"{t}-{i}") for t, n in (("coder", 6), ("critic", 2), ("deployer", 1))
                   for i in range(n)]  # fmt: skip
            for agent_type, task_id in ids:
                await http.submit(agent_type, task_id)
            finals = {tid: (await http.final(tid))["status"] for _, tid in ids}
            expected = {"coder": "completed", "critic": "failed", "deployer": "dead"}
            assert all(finals[tid] == expected[t] for t, tid in ids), (finals, procs.logs())
            await http.ok(f"{http.base}/no/such/route")
            # (what a worker counted after its last heartbeat dies with it: let the
            # heartbeats carrying all six completions reach Prometheus before the kill)
            await eventually(lambda: prom.query(COMPLETED_6), 30, interval=0.5)
            victim = (await slots(nc, settings))["coder-0@host-a"]["pid"]
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: events.of("relaunch", slot="coder-0@host-a"), 30)
        await wait_running(nc, settings, timeout=30)

        # Then what happened is in Prometheus ...
        checks = {
            COMPLETED_6: "completed (kept across the relaunch)",
            'sum(foundry_tasks_failed_total{agent_type="critic"}) >= 2': "failed",
            'sum(foundry_dead_letters{agent_type="deployer"}) >= 1': "dead letter",
            'sum(increase(foundry_relaunches_total{agent_type="coder",reason="exit"}[1m])) > 0':
                "relaunch",
            'sum(foundry_gateway_request_duration_seconds_count{route="unmatched"}) >= 1': "404",
            'sum(foundry_remediations_total{policy="disk",outcome="dry_run"}) >= 1': "remediation",
        }  # fmt: skip
        for expr, what in checks.items():
            try:
                await eventually(lambda e=expr: prom.query(e), 30, interval=0.5)  # type: ignore[misc]
            except AssertionError:
                raise AssertionError(f"no {what}: {expr}\n{procs.logs()}") from None
        # ... and every panel of every dashboard, every template variable and every
        # annotation query returns at least one series
        counts = _panel_counts(prom)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not all(counts.values()) and loop.time() < deadline:
            await asyncio.sleep(1.0)
            counts = _panel_counts(prom)
        empty = [key for key, n in counts.items() if not n]
        assert not empty, f"queries without data: {empty}"
    finally:
        await session.close()
        await nc.close()
        prom.stop()
        procs.stop_all()
        nats.stop()
    width = max(len(k) for k in counts)
    print("\nseries per panel query (dashboard / panel / refId):")
    for key, n in counts.items():
        print(f"  {key:<{width}}  {n}")


def _targets_up(prom: Prometheus) -> bool:
    health = {t["labels"]["job"]: t["health"] for t in prom.targets()}
    return all(health.get(job) == "up" for job in FOUNDRY_JOBS)


def _panel_counts(prom: Prometheus) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name, board in dashboards.load().items():
        for panel, target in dashboards.panel_queries(board):
            key = f"{name} / {panel['title']} / {target['refId']}"
            counts[key] = len(prom.query(dashboards.concrete(target["expr"])))
        for metric in dashboards.variable_metrics(board):
            counts[f"{name} / variable {metric}"] = len(prom.query(metric))
        for note in board["annotations"]["list"]:
            counts[f"{name} / annotation {note['name']}"] = len(prom.query(note["expr"]))
    return counts
