"""The standard run: every phase, in an order that keeps the measurements apart.

1. servers with authorization (and a TLS nats-server), the raw baseline fleet, the
   Foundry cluster (healer → gateway + workers) and a second one on the TLS server
2. idle footprint, warm-up of every system
3. throughput through NATS, baseline, Foundry and Foundry over TLS alternating for
   ``rounds`` rounds; then the TLS cluster stops
4. throughput through the gateway, with a token and (a second gateway of the same
   cluster, ``FOUNDRY_API_AUTH=off``) without, alternating for ``http_rounds`` rounds
5. latency at fixed offered loads, baseline and Foundry
6. healing: kill -9 series, SIGSTOP, kills under load (baseline fleet stopped first)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.baseline import Baseline
from bench.cluster import AGENT_TYPE, ClusterOptions, FoundryCluster
from bench.infra import Infra
from bench.interrupt import Guard
from bench.machine import LoadWatch
from bench.phases import healing, http, latency, throughput
from bench.phases.footprint import CpuMeter, RssPeak, rss_mb
from bench.pki import redis_has_tls, tls_connections
from bench.plan import Plan
from bench.profiling import Profiler
from bench.session import Session
from bench.workload import Target, make_tasks
from foundry.settings import Settings

NO_AUTH = {"FOUNDRY_API_AUTH": "off"}  # loopback only: the gateway warns and serves anyone
SECURITY = {
    "nats": "one user per role with subject allow-lists, nobody anonymous (as foundry up)",
    "redis": "one ACL user (foundry:* keys, no admin commands), default user off",
    "foundry": "healer as its user, each child with its own role's credentials",
    "baseline": "same servers: NATS admin user, the Redis ACL user",
    "api": "bearer token (scopes submit, read); a second gateway with FOUNDRY_API_AUTH=off",
}


@dataclass(frozen=True)
class System:
    """One system under test in the NATS rounds: where its tasks go, whose CPU counts."""

    name: str
    prefix: str  # of its task ids
    target: Target
    pids: dict[str, int]
    session: Session


@dataclass
class SuiteOptions:
    pythonpath: tuple[Path, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()
    profile_dir: Path | None = None
    keep: bool = False


@dataclass
class Suite:
    plan: Plan
    options: SuiteOptions
    watch: LoadWatch
    out: dict[str, Any] = field(default_factory=dict)
    infra: Infra | None = None
    session: Session | None = None
    tls_session: Session | None = None
    baseline: Baseline | None = None
    cluster: FoundryCluster | None = None
    tls_cluster: FoundryCluster | None = None

    async def run(self, guard: Guard) -> dict[str, Any]:
        """Measure inside ``guard`` (a signal cancels that part); always clean up after."""
        limits = Settings.from_env(dict(self.options.extra_env))
        infra = await asyncio.to_thread(Infra.start, self.options.keep, True, limits)
        self.infra = infra
        try:
            await guard.run(self._body(infra))
        finally:
            await self._cleanup(infra)
        return self.out

    async def _body(self, infra: Infra) -> None:
        self.session = session = await Session.open(infra)
        self.baseline = baseline = Baseline(infra, self.plan.workers)
        await baseline.start(session.nc)
        self.cluster = cluster = FoundryCluster(infra, self._cluster_options())
        self.out["cluster_ready_seconds"] = round(await cluster.start(session.nc), 3)
        self.out["cluster_overrides"] = cluster.options.overrides()
        self.tls_session = await Session.open(infra, infra.tls_bus)
        self.tls_cluster = FoundryCluster(infra, self._cluster_options(tls=True))
        await self.tls_cluster.start(self.tls_session.nc)
        self.out["tls"] = await tls_setup(infra)
        self.out["security"] = SECURITY
        await self._measure(session, infra, baseline, cluster)

    async def _cleanup(self, infra: Infra) -> None:
        try:
            for cluster in (self.tls_cluster, self.cluster):
                if cluster is not None:
                    with contextlib.suppress(Exception):
                        await cluster.stop()
            if self.baseline is not None:
                await asyncio.to_thread(self.baseline.stop)
            for session in (self.tls_session, self.session):
                if session is not None:
                    with contextlib.suppress(Exception):
                        await session.close()
        finally:
            await asyncio.to_thread(infra.close)

    def _cluster_options(self, tls: bool = False) -> ClusterOptions:
        return ClusterOptions(
            label="tls" if tls else "default",
            tls=tls,
            workers=self.plan.workers,
            ack_wait=self.plan.ack_wait,
            heartbeat_interval=self.plan.heartbeat_interval,
            silence_timeout=self.plan.silence_timeout,
            pythonpath=self.options.pythonpath,
            extra_env=self.options.extra_env,
        )

    async def _measure(
        self, s: Session, infra: Infra, baseline: Baseline, cluster: FoundryCluster
    ) -> None:
        plan = self.plan
        assert self.tls_cluster is not None and self.tls_session is not None
        tls_s = self.tls_session
        servers = infra.server_pids()
        me = {"bench client": os.getpid()}
        roles = await cluster.pids(s.nc)
        tls_roles = await self.tls_cluster.pids(tls_s.nc)
        base_roles = {f"baseline-{i}": pid for i, pid in enumerate(baseline.pids())}
        tls_all = {**tls_roles, **infra.tls_server_pids()}
        self.out["pids"] = {
            **roles,
            **servers,
            **base_roles,
            **{f"tls {role}": pid for role, pid in tls_all.items()},
        }
        await asyncio.sleep(1.0)
        self.out["rss_idle_mb"] = rss_mb({**roles, **servers})
        tls_target = replace(self.tls_cluster.target, name="foundry-tls")
        tls_pids = {**tls_all, **me}
        systems = (
            System("baseline", "b", baseline.target, {**base_roles, **servers, **me}, s),
            System("foundry", "f", cluster.target, {**roles, **servers, **me}, s),
            System("foundry_tls", "t", tls_target, tls_pids, tls_s),
        )
        for sy in systems:
            tasks = make_tasks(f"{sy.prefix}w", plan.warmup)
            await throughput.run(sy.session.nc, sy.session.js, s.redis, sy.target, tasks)
        with RssPeak({**roles, **servers}) as peak:
            self.out["throughput"] = await self._rounds(systems, roles)
            await self.tls_cluster.stop()  # its idle fleet stays out of the later phases
            self.out["tls"].update(tls_figures(self.out["throughput"]))
            self.out.update(await self._http_pair(s, cluster, {**roles, **servers, **me}))
        self.out["rss_load_mb"] = dict(peak.peak)
        self.out["latency"] = await self._latency(s, systems[:2])
        await asyncio.to_thread(baseline.stop)
        self.out["healing"] = await self._healing(s, cluster)

    async def _phase(self, name: str) -> None:
        await asyncio.to_thread(self.watch.mark, name)

    async def _rounds(self, systems: tuple[System, ...], roles: dict[str, int]) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {sy.name: [] for sy in systems}
        for r in range(self.plan.rounds):
            for sy in systems:
                profiled = sy.name == "foundry" and r == self.plan.rounds - 1  # the last round
                profile = (
                    self._profiler(
                        roles.get(self.cluster.worker_ids()[0] if self.cluster else ""), "worker"
                    )
                    if profiled
                    else None
                )
                tasks = make_tasks(f"{sy.prefix}{r}", self.plan.tasks)
                meter = CpuMeter(sy.pids).start()
                mark = f"{sy.name}{r}"
                await self._phase(mark + "<")
                if profile is not None:
                    await profile.start()
                nc, js, redis = sy.session.nc, sy.session.js, sy.session.redis
                result = await throughput.run(nc, js, redis, sy.target, tasks)
                if profile is not None:
                    self.out.setdefault("profile", {})["worker"] = await profile.stop()
                await self._phase(mark + ">")
                meter.stop()
                result.extra = {
                    "round": r,
                    "cpu_seconds": meter.used,
                    "cpu_us_per_task": meter.per_task_us(result.completed),
                    "others_cores": round(self.watch.others_cores(mark + "<", mark + ">"), 2),
                }
                runs[sy.name].append(result.to_json())
        best = {name: max(rs, key=lambda x: x["tasks_per_second"]) for name, rs in runs.items()}
        return {
            "runs": runs,
            "best": best,
            "ratio": _ratio(best["foundry"], best["baseline"]),
            "ratio_per_round": _ratios(runs["foundry"], runs["baseline"]),
        }

    async def _http_pair(
        self, s: Session, cluster: FoundryCluster, pids: dict[str, int]
    ) -> dict[str, Any]:
        """HTTP through the healer's gateway with a token, and through a second gateway of
        the same cluster with FOUNDRY_API_AUTH=off without one, alternating."""
        address = await cluster.extra_gateway("open", NO_AUTH)
        try:
            open_pid = cluster.extra[-1].pid
            self.out["pids"]["gateway without token"] = open_pid
            runs: dict[str, list[dict[str, Any]]] = {"token": [], "no_token": []}
            # each run counts the CPU of both gateways: the idle one still gets every event
            token = {**pids, "idle gateway": open_pid}
            no_token = {**pids, "gateway": open_pid, "idle gateway": pids["gateway"]}
            for r in range(self.plan.http_rounds):
                last = r == self.plan.http_rounds - 1
                runs["token"].append(
                    await self._http(
                        s, cluster, cluster.gateway, cluster.token, token, f"ht{r}", last
                    )
                )
                runs["no_token"].append(
                    await self._http(s, cluster, address, "", no_token, f"hn{r}", False)
                )
        finally:
            await cluster.stop_extra()
        best = {k: max(rs, key=lambda x: x["tasks_per_second"]) for k, rs in runs.items()}
        return {
            "http": best["token"],
            "http_without_token": best["no_token"],
            "http_auth": {
                "runs": {k: [x["tasks_per_second"] for x in rs] for k, rs in runs.items()},
                "ratio": _ratio(best["token"], best["no_token"]),
                "ratio_per_round": _ratios(runs["token"], runs["no_token"]),
            },
        }

    async def _http(
        self,
        s: Session,
        cluster: FoundryCluster,
        gateway: tuple[str, int],
        token: str,
        pids: dict[str, int],
        mark: str,
        profiled: bool,
    ) -> dict[str, Any]:
        tasks = http.bodies(mark, self.plan.http_tasks, AGENT_TYPE)
        profile = self._profiler(pids.get("gateway"), "gateway") if profiled else None
        meter = CpuMeter(pids).start()
        await self._phase(mark + "<")
        if profile is not None:
            await profile.start()
        result = await http.run(
            s.nc, s.redis, cluster.target, gateway, tasks, self.plan.http_clients, token=token
        )
        if profile is not None:
            self.out.setdefault("profile", {})["gateway"] = await profile.stop()
        await self._phase(mark + ">")
        meter.stop()
        result.extra = {
            "cpu_seconds": meter.used,
            "cpu_us_per_task": meter.per_task_us(result.completed),
            "others_cores": round(self.watch.others_cores(mark + "<", mark + ">"), 2),
        }
        return result.to_json()

    async def _latency(self, s: Session, systems: tuple[System, ...]) -> list[dict[str, Any]]:
        out = []
        for rate, seconds in self.plan.latency:
            for sy in systems:
                name, target = sy.name, sy.target
                mark = f"lat-{name}-{rate:g}"
                await self._phase(mark + "<")
                result = await latency.run(s.nc, s.js, s.redis, target, rate, seconds, mark)
                await self._phase(mark + ">")
                row = result.to_json()
                row["others_cores"] = round(self.watch.others_cores(mark + "<", mark + ">"), 2)
                out.append(row)
        return out

    async def _healing(self, s: Session, cluster: FoundryCluster) -> dict[str, Any]:
        events = healing.HealEvents()
        sub = await s.nc.subscribe(cluster.names.heal_event(">"), cb=events.on_msg)
        out: dict[str, Any] = {}
        try:
            await self._phase("heal<")
            await self._phase("kill9<")
            out["kill9"] = await healing.kill9(cluster, events, self.plan.kills)
            await self._phase("kill9>")
            if self.plan.stops:
                out["sigstop"] = await healing.sigstop(cluster, events, self.plan.stops)
            await self._phase("load<")
            out["under_load"] = await healing.under_load(
                s.nc, s.js, s.redis, cluster, self.plan.load_tasks, self.plan.load_kills
            )
            await self._phase("load>")
            await self._phase("heal>")
            out["others_cores"] = round(self.watch.others_cores("heal<", "heal>"), 2)
        finally:
            await sub.unsubscribe()
        return out

    def _profiler(self, pid: int | None, name: str) -> Profiler | None:
        if self.options.profile_dir is None or pid is None or self.infra is None:
            return None
        return Profiler(pid, self.options.profile_dir / f"{name}.stacks", self.infra.procs)


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """``a``'s tasks per second over ``b``'s."""
    return (
        round(a["tasks_per_second"] / b["tasks_per_second"], 3) if b["tasks_per_second"] else None
    )


def _ratios(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[float]:
    return [r for x, y in zip(a, b, strict=True) if (r := _ratio(x, y)) is not None]


async def tls_setup(infra: Infra) -> dict[str, Any]:
    """What the TLS throughput runs on, for the report, and proof that it is TLS."""
    redis_tls = await asyncio.to_thread(redis_has_tls)
    assert infra.tls_bus is not None
    return {
        **await tls_connections(infra.tls_bus.monitor_port),
        "nats": "TLS (server certificate from a CA made at run time; clients verify it)",
        "nats_url": infra.tls_bus.address,
        "redis_tls_available": redis_tls,
        "redis": (
            "plain (the bench does not run Redis over TLS)"
            if redis_tls
            else "plain: this redis-server was built without TLS"
        ),
    }


def tls_figures(tp: dict[str, Any]) -> dict[str, Any]:
    """Foundry over TLS against Foundry over plain NATS, from the throughput rounds."""
    best = tp["best"]["foundry_tls"]
    return {
        "tasks_per_second": best["tasks_per_second"],
        "ratio_to_plain": _ratio(best, tp["best"]["foundry"]),
        "ratio_per_round": _ratios(tp["runs"]["foundry_tls"], tp["runs"]["foundry"]),
    }
