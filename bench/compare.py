"""``--codec-compare``: what uvloop and orjson (or msgspec) buy, baseline and Foundry.

Each variant runs the same NATS throughput batch (and, for Foundry, an HTTP
batch through the gateway) on a freshly started fleet; variants alternate for
``rounds`` rounds and the best run of each counts. Each Foundry variant is
checked to have really loaded (or not) uvloop and orjson/msgspec, from the
worker's memory map.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench.baseline import Baseline
from bench.cluster import AGENT_TYPE, ClusterOptions, FoundryCluster
from bench.infra import Infra
from bench.phases import http, throughput
from bench.session import Session
from bench.variants import BASELINE_VARIANTS, FOUNDRY_VARIANTS, Variant
from bench.workload import make_tasks


def loaded(pid: int) -> dict[str, bool]:
    """Which native modules a process has mapped: uvloop, orjson, msgspec."""
    try:
        paths = {m.path for m in psutil.Process(pid).memory_maps()}
    except psutil.Error:
        return {}
    return {
        name: any(f"/{name}/" in p or f"/{name}." in p for p in paths)
        for name in ("uvloop", "orjson", "msgspec")
    }


@dataclass
class Compare:
    tasks: int
    rounds: int
    workers: int
    http_clients: int
    out: dict[str, Any] = field(default_factory=dict)

    async def run(self) -> dict[str, Any]:
        infra = await asyncio.to_thread(Infra.start)
        session = await Session.open(infra)
        runs: dict[str, list[dict[str, Any]]] = {}
        try:
            for r in range(self.rounds):
                for variant in BASELINE_VARIANTS:
                    row = await self._baseline(infra, session, variant, r)
                    runs.setdefault(f"baseline {variant.name}", []).append(row)
                for variant in FOUNDRY_VARIANTS:
                    row = await self._foundry(infra, session, variant, r)
                    runs.setdefault(f"foundry {variant.name}", []).append(row)
        finally:
            await session.close()
            await asyncio.to_thread(infra.close)
        self.out["runs"] = runs
        self.out["best"] = {
            name: {
                key: max(r[key] for r in rows)
                for key in ("nats_tasks_per_second", "http_tasks_per_second")
                if rows[0].get(key) is not None
            }
            for name, rows in runs.items()
        }
        return self.out

    async def _baseline(self, infra: Infra, s: Session, variant: Variant, r: int) -> dict[str, Any]:
        fleet = Baseline(infra, self.workers, variant.loop, variant.codec)
        try:
            await fleet.start(s.nc)
            prefix = f"cb-{variant.name}-{r}"
            await throughput.run(s.nc, s.js, s.redis, fleet.target, make_tasks(prefix + "w", 300))
            res = await throughput.run(
                s.nc, s.js, s.redis, fleet.target, make_tasks(prefix, self.tasks)
            )
        finally:
            await asyncio.to_thread(fleet.stop)
        return {"nats_tasks_per_second": round(res.per_second, 1), "missing": res.missing}

    async def _foundry(self, infra: Infra, s: Session, variant: Variant, r: int) -> dict[str, Any]:
        label = f"{variant.name}-r{r}".replace("+", "-")
        options = ClusterOptions(
            workers=self.workers, label=label, pythonpath=variant.shims(infra.root)
        )
        cluster = FoundryCluster(infra, options)
        try:
            await cluster.start(s.nc)
            pids = await cluster.pids(s.nc)
            prefix = f"cf-{label}"
            target = cluster.target
            await throughput.run(s.nc, s.js, s.redis, target, make_tasks(prefix + "w", 300))
            nats_run = await throughput.run(
                s.nc, s.js, s.redis, target, make_tasks(prefix, self.tasks)
            )
            bodies = http.bodies(prefix + "h", max(1, self.tasks // 2), AGENT_TYPE)
            http_run = await http.run(
                s.nc, s.redis, target, cluster.gateway, bodies, self.http_clients
            )
            modules = {
                "worker": loaded(pids[f"{AGENT_TYPE}-0"]),
                "gateway": loaded(pids["gateway"]),
            }
        finally:
            await cluster.stop()
        return {
            "nats_tasks_per_second": round(nats_run.per_second, 1),
            "http_tasks_per_second": round(http_run.per_second, 1),
            "missing": nats_run.missing + http_run.missing,
            "loaded": modules,
        }


def render(result: dict[str, Any]) -> str:
    best = result["best"]
    ref_b = best.get("baseline uvloop+orjson", {}).get("nats_tasks_per_second") or 0.0
    ref_f = best.get("foundry uvloop+orjson", {})
    lines = [
        f"uvloop / JSON codec comparison — {result['tasks']:,} tasks per NATS run, "
        f"best of {result['rounds']} round(s)",
        "",
        "| system, loop + codec | NATS tasks/s | vs default | HTTP tasks/s | vs default |",
        "|---|---|---|---|---|",
    ]
    for name, vals in best.items():
        nats_tps = vals.get("nats_tasks_per_second", 0.0)
        ref = ref_b if name.startswith("baseline") else ref_f.get("nats_tasks_per_second", 0.0)
        http_tps = vals.get("http_tasks_per_second")
        ref_h = ref_f.get("http_tasks_per_second") or 0.0
        lines.append(
            f"| {name} | {nats_tps:,.0f} | {nats_tps / ref if ref else 0:.2f}× | "
            + (
                f"{http_tps:,.0f} | {http_tps / ref_h if ref_h else 0:.2f}× |"
                if http_tps
                else "— | — |"
            )
        )
    return "\n".join(lines)
