"""End to end on `foundry up`'s own defaults: `foundry up` run as a user runs it, a real
Prometheus scraping what it serves with monitor/prometheus.yml (ports rewritten), traffic
through the gateway with the generated token (completions through an LLM provider, failures,
a dead letter, a replay, a cancel, a limit wait, a 429, a kill -9); then every dashboard
panel's PromQL returns data."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import ClientSession

from foundry.servers import free_port
from foundry.settings import Settings
from tests import dashboards
from tests.conftest import eventually
from tests.fakes import FakeLLM, llm_app, serve
from tests.foundryup import FoundryUp
from tests.prom import Prometheus, config_for_test, require

MODEL = "dash-model"
CODERS = 6
COMPLETED = f'sum(foundry_tasks_completed_total{{agent_type="coder"}}) >= {CODERS}'
FOUNDRY_JOBS = {"foundry-gateway", "foundry-monitor", "foundry-healer"}


class Http:
    """The gateway as a client sees it: the token from client.env in every request."""

    def __init__(self, session: ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def ok(self, path: str) -> bool:
        try:
            async with self.session.get(f"{self.base}{path}") as resp:
                return resp.status == 200
        except OSError:
            return False

    async def call(self, method: str, path: str, status: int, **kw: Any) -> Any:
        async with self.session.request(method, f"{self.base}{path}", **kw) as resp:
            assert resp.status == status, (method, path, resp.status, await resp.text())
            return await resp.json()

    async def submit(self, agent_type: str, task_id: str, **fields: Any) -> None:
        body = {"agent_type": agent_type, "description": "observed", "task_id": task_id, **fields}
        await self.call("POST", "/api/cluster/task/submit", 202, json=body)

    async def final(self, task_id: str) -> str:
        out = await self.call("GET", f"/api/cluster/task/{task_id}?wait=30", 200)
        return str(out["status"])

    async def pid(self, prefix: str) -> int:
        """The pid of the live worker whose id starts with ``prefix`` (``coder-0@``)."""
        live = await self.call("GET", "/api/cluster/agents/live", 200)
        return int(next(a["pid"] for a in live["agents"] if a["worker_id"].startswith(prefix)))


async def test_every_dashboard_panel_returns_data_on_foundry_ups_defaults(
    tmp_path: Path,
) -> None:
    require("prometheus")
    # Given an LLM provider (outside the cluster) that throttles the first request once
    llm = FakeLLM(script=["429"])
    async with serve(llm_app(llm)) as llm_url:
        # and `foundry up` with a data dir, free ports and a user's configuration: coders on
        # the built-in llm handler under a rate limit, critics that fail, deployers that
        # never succeed (two deliveries, then a dead letter), any disk "full" in dry run;
        # nothing about the NATS monitoring port beyond its number, nor where to read it
        up = FoundryUp(
            tmp_path,
            FOUNDRY_FLEET="coder=2,critic=1,deployer=1",
            FOUNDRY_HANDLERS="critic=tests.handlers:fail,deployer=tests.handlers:retry_always",
            FOUNDRY_LLM_URL=f"{llm_url}/v1", FOUNDRY_LLM_MODEL=MODEL, FOUNDRY_LLM_BACKOFF="0.05",
            FOUNDRY_RATE_LIMITS="coder=3/s", FOUNDRY_MAX_DELIVER="2",
            FOUNDRY_HOST_INTERVAL="0.5", FOUNDRY_DISK_THRESHOLD="0.1",
            FOUNDRY_REMEDIATION_DRY_RUN="1", FOUNDRY_REMEDIATION_COOLDOWN="1",
        )  # fmt: skip
        prom: Prometheus | None = None
        session: ClientSession | None = None
        counts: dict[str, int] = {}
        try:
            await asyncio.to_thread(up.start)
            # and a scrape token made as the README says, and Prometheus scraping every
            # target of monitor/prometheus.yml each second
            made = await asyncio.to_thread(
                up.module, "foundry.apitokens", "create",
                str(up.data / "secrets" / "api-tokens.jsonl"), "prometheus", "metrics",
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            token_file = tmp_path / "metrics.token"
            token_file.write_text(made.stdout.strip() + "\n")
            ports = Settings(gateway_port=up.port("gateway"), healer_port=up.port("healer"),
                             monitor_port=up.port("monitor"))  # fmt: skip
            config = config_for_test(ports, prom_port=free_port(), token_file=token_file)
            prom = Prometheus(config, tmp_path / "prometheus")
            await asyncio.to_thread(prom.start)
            p = prom
            await eventually(lambda: _targets_up(p), 30, interval=0.5)
            session = ClientSession(headers={"Authorization": f"Bearer {up.token()}"})
            http = Http(session, up.gateway)
            await eventually(lambda: _all_healthy(http, 4), 45, interval=0.3)

            # When tasks complete (through the provider, waiting for the limit), fail and die,
            # a delayed task is cancelled and the dead letter replayed with the CLI, an unknown
            # route is asked for, and a worker is killed with SIGKILL
            ids = [(t, f"{t}-{i}") for t, n in (("coder", CODERS), ("critic", 2), ("deployer", 1))
                   for i in range(n)]  # fmt: skip
            for agent_type, task_id in ids:
                await http.submit(agent_type, task_id)
            await http.submit("coder", "later-1", delay=600)
            finals = {tid: await http.final(tid) for _, tid in ids}
            expected = {"coder": "completed", "critic": "failed", "deployer": "dead"}
            assert all(finals[tid] == expected[t] for t, tid in ids), (finals, up.log())
            assert len(llm.requests) == CODERS + 1  # each coder task, and the throttled try
            for args in (("cancel", "later-1"), ("replay", "deployer-0")):
                out = await asyncio.to_thread(up.cli, *args)
                assert out.returncode == 0, (args, out.stdout, out.stderr)
            await http.ok("/no/such/route")
            # (what a worker counted after its last heartbeat dies with it: let the
            # heartbeats carrying all its completions reach Prometheus before the kill)
            await eventually(lambda: prom.query(COMPLETED), 30, interval=0.5)
            victim = await http.pid("coder-0@")
            os.kill(victim, signal.SIGKILL)

            async def replaced() -> bool:
                return await http.pid("coder-0@") != victim and await _all_healthy(http, 4)

            await eventually(replaced, 30, interval=0.3)
            up.note_children()

            # Then what happened is in Prometheus, the nats-server figures included ...
            checks = {
                COMPLETED: "completed (kept across the relaunch)",
                "min(foundry_nats_server_monitoring_up) == 1": "nats-server monitoring",
                "max(foundry_nats_server_connections) > 0": "nats-server connections",
                'sum(foundry_tasks_failed_total{agent_type="critic"}) >= 2': "failed",
                'sum(foundry_dead_letters{agent_type="deployer"}) >= 1': "dead letter",
                'sum(foundry_dead_letters_replayed_total{agent_type="deployer"}) >= 1': "replay",
                'sum(foundry_tasks_cancelled_total{agent_type="coder"}) >= 1': "cancel",
                'sum(foundry_limit_waits_total{limit="type:coder"}) >= 1': "limit wait",
                f'sum(foundry_llm_provider_throttled_total{{model="{MODEL}"}}) >= 1': "429",
                f'sum(foundry_llm_tokens_total{{model="{MODEL}"}}) > 0': "tokens",
                'sum(increase(foundry_relaunches_total{agent_type="coder",reason="exit"}[1m])) > 0':
                    "relaunch",
                'sum(foundry_gateway_request_duration_seconds_count{route="unmatched"}) >= 1':
                    "404",
                'sum(foundry_remediations_total{policy="disk",outcome="dry_run"}) >= 1':
                    "remediation",
            }  # fmt: skip
            for expr, what in checks.items():
                try:
                    await eventually(lambda e=expr: prom.query(e), 30, interval=0.5)  # type: ignore[misc]
                except AssertionError:
                    raise AssertionError(f"no {what}: {expr}\n{up.log()}") from None
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
            if session is not None:
                await session.close()
            if prom is not None:
                prom.stop()
            left = await asyncio.to_thread(up.stop)
        # and stopping `foundry up` leaves nothing running
        assert not left, [(c.pid, c.cmdline()) for c in left]
        assert up.proc is not None and up.proc.returncode == 0, up.log()
    width = max(len(k) for k in counts)
    print("\nseries per panel query (dashboard / panel / refId):")
    for key, n in counts.items():
        print(f"  {key:<{width}}  {n}")


async def _all_healthy(http: Http, count: int) -> bool:
    try:
        live = await http.call("GET", "/api/cluster/agents/live", 200)
    except (OSError, AssertionError):
        return False
    agents = live["agents"]
    return len(agents) == count and all(a["status"] == "healthy" for a in agents)


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
