"""The standard run: every phase, in an order that keeps the measurements apart.

1. servers, the raw baseline fleet, and the Foundry cluster (healer → gateway + workers)
2. idle footprint, warm-up of both systems
3. throughput through NATS, baseline and Foundry alternating for ``rounds`` rounds
4. throughput through the gateway
5. latency at fixed offered loads, baseline and Foundry
6. healing: kill -9 series, SIGSTOP, kills under load (baseline fleet stopped first)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.baseline import Baseline
from bench.cluster import AGENT_TYPE, ClusterOptions, FoundryCluster
from bench.infra import Infra
from bench.interrupt import Guard
from bench.machine import LoadWatch
from bench.phases import healing, http, latency, throughput
from bench.phases.footprint import CpuMeter, RssPeak, rss_mb
from bench.plan import Plan
from bench.profiling import Profiler
from bench.session import Session
from bench.workload import Target, make_tasks


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
    baseline: Baseline | None = None
    cluster: FoundryCluster | None = None

    async def run(self, guard: Guard) -> dict[str, Any]:
        """Measure inside ``guard`` (a signal cancels that part); always clean up after."""
        infra = await asyncio.to_thread(Infra.start, self.options.keep)
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
        await self._measure(session, infra, baseline, cluster)

    async def _cleanup(self, infra: Infra) -> None:
        try:
            if self.cluster is not None:
                with contextlib.suppress(Exception):
                    await self.cluster.stop()
            if self.baseline is not None:
                await asyncio.to_thread(self.baseline.stop)
            if self.session is not None:
                with contextlib.suppress(Exception):
                    await self.session.close()
        finally:
            await asyncio.to_thread(infra.close)

    def _cluster_options(self) -> ClusterOptions:
        return ClusterOptions(
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
        servers = infra.server_pids()
        me = {"bench client": os.getpid()}
        roles = await cluster.pids(s.nc)
        base_roles = {f"baseline-{i}": pid for i, pid in enumerate(baseline.pids())}
        self.out["pids"] = {**roles, **servers, **base_roles}
        await asyncio.sleep(1.0)
        self.out["rss_idle_mb"] = rss_mb({**roles, **servers})
        for target, prefix in ((baseline.target, "bw"), (cluster.target, "fw")):
            await throughput.run(s.nc, s.js, s.redis, target, make_tasks(prefix, plan.warmup))
        systems = (
            ("baseline", baseline.target, {**base_roles, **servers, **me}),
            ("foundry", cluster.target, {**roles, **servers, **me}),
        )
        with RssPeak({**roles, **servers}) as peak:
            self.out["throughput"] = await self._rounds(s, systems, roles)
            self.out["http"] = await self._http(s, cluster, {**roles, **servers, **me})
        self.out["rss_load_mb"] = dict(peak.peak)
        self.out["latency"] = await self._latency(s, systems)
        await asyncio.to_thread(baseline.stop)
        self.out["healing"] = await self._healing(s, cluster)

    async def _phase(self, name: str) -> None:
        await asyncio.to_thread(self.watch.mark, name)

    async def _rounds(
        self,
        s: Session,
        systems: tuple[tuple[str, Target, dict[str, int]], ...],
        roles: dict[str, int],
    ) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in systems}
        for r in range(self.plan.rounds):
            for name, target, pids in systems:
                profiled = name == "foundry" and r == self.plan.rounds - 1  # the last round
                profile = (
                    self._profiler(roles.get(f"{AGENT_TYPE}-0"), "worker") if profiled else None
                )
                tasks = make_tasks(f"{name[0]}{r}", self.plan.tasks)
                meter = CpuMeter(pids).start()
                await self._phase(f"{name}{r}<")
                if profile is not None:
                    await profile.start()
                result = await throughput.run(s.nc, s.js, s.redis, target, tasks)
                if profile is not None:
                    self.out.setdefault("profile", {})["worker"] = await profile.stop()
                await self._phase(f"{name}{r}>")
                meter.stop()
                result.extra = {
                    "round": r,
                    "cpu_seconds": meter.used,
                    "cpu_us_per_task": meter.per_task_us(result.completed),
                    "others_cores": round(self.watch.others_cores(f"{name}{r}<", f"{name}{r}>"), 2),
                }
                runs[name].append(result.to_json())
        best = {name: max(rs, key=lambda x: x["tasks_per_second"]) for name, rs in runs.items()}
        base, found = best["baseline"]["tasks_per_second"], best["foundry"]["tasks_per_second"]
        rounds = zip(runs["baseline"], runs["foundry"], strict=True)
        return {
            "runs": runs,
            "best": best,
            "ratio": round(found / base, 3) if base else None,
            "ratio_per_round": [
                round(f["tasks_per_second"] / b["tasks_per_second"], 3)
                for b, f in rounds
                if b["tasks_per_second"]
            ],
        }

    async def _http(
        self, s: Session, cluster: FoundryCluster, pids: dict[str, int]
    ) -> dict[str, Any]:
        tasks = http.bodies("h", self.plan.http_tasks, AGENT_TYPE)
        profile = self._profiler(pids.get("gateway"), "gateway")
        meter = CpuMeter(pids).start()
        await self._phase("http<")
        if profile is not None:
            await profile.start()
        result = await http.run(
            s.nc, s.redis, cluster.target, cluster.gateway, tasks, self.plan.http_clients,
            token=cluster.token,
        )  # fmt: skip
        if profile is not None:
            self.out.setdefault("profile", {})["gateway"] = await profile.stop()
        await self._phase("http>")
        meter.stop()
        result.extra = {
            "cpu_seconds": meter.used,
            "cpu_us_per_task": meter.per_task_us(result.completed),
            "others_cores": round(self.watch.others_cores("http<", "http>"), 2),
        }
        return result.to_json()

    async def _latency(
        self, s: Session, systems: tuple[tuple[str, Target, dict[str, int]], ...]
    ) -> list[dict[str, Any]]:
        out = []
        for rate, seconds in self.plan.latency:
            for name, target, _ in systems:
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
