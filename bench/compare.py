"""``--codec-compare``: what uvloop and orjson (or msgspec) buy, baseline and Foundry.

Each variant runs the same NATS throughput batch (and, for Foundry, an HTTP
batch through the gateway) on a freshly started fleet; variants alternate for
``rounds`` rounds and the best run of each counts. Besides tasks per second,
which other processes' load disturbs, each run reports the CPU time the
workers (and the gateway) spent per task, which it disturbs much less. Each
Foundry variant is checked to have really loaded (or not) uvloop and
orjson/msgspec, from the worker's memory map.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import psutil

from bench import micro
from bench.baseline import Baseline
from bench.cluster import AGENT_TYPE, ClusterOptions, FoundryCluster
from bench.infra import Infra
from bench.interrupt import Guard
from bench.machine import LoadWatch
from bench.phases import http, throughput
from bench.phases.footprint import CpuMeter
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


def _workers_us(meter: CpuMeter, tasks: int) -> float | None:
    return meter.per_task_us(tasks).get("workers")


BEST_MAX = ("nats_tasks_per_second", "http_tasks_per_second")
BEST_MIN = ("nats_worker_cpu_us", "nats_total_cpu_us", "http_gateway_cpu_us", "http_total_cpu_us")


@dataclass
class Compare:
    tasks: int
    rounds: int
    workers: int
    http_clients: int
    watch: LoadWatch
    baseline_variants: tuple[Variant, ...] = BASELINE_VARIANTS
    foundry_variants: tuple[Variant, ...] = FOUNDRY_VARIANTS
    extra_env: tuple[tuple[str, str], ...] = ()
    out: dict[str, Any] = field(default_factory=dict)

    async def _measured(
        self, name: str, pids: dict[str, int], run: Any
    ) -> tuple[Any, CpuMeter, float]:
        """Run ``run()`` with a CPU meter over ``pids`` and load marks around it."""
        meter = CpuMeter({**pids, "bench client": os.getpid()}).start()
        await asyncio.to_thread(self.watch.mark, name + "<")
        result = await run()
        await asyncio.to_thread(self.watch.mark, name + ">")
        meter.stop()
        return result, meter, round(self.watch.others_cores(name + "<", name + ">"), 2)

    async def _variants(
        self, infra: Infra, session: Session, runs: dict[str, list[dict[str, Any]]]
    ) -> None:
        for r in range(self.rounds):
            for variant in self.baseline_variants:
                row = await self._baseline(infra, session, variant, r)
                runs.setdefault(f"baseline {variant.name}", []).append(row)
            for variant in self.foundry_variants:
                row = await self._foundry(infra, session, variant, r)
                runs.setdefault(f"foundry {variant.name}", []).append(row)

    async def run(self, guard: Guard) -> dict[str, Any]:
        self.out["micro"] = {
            "codec_us": await asyncio.to_thread(micro.codec_costs),
            "loop_us": await asyncio.to_thread(micro.loop_costs),
        }
        infra = await asyncio.to_thread(Infra.start)
        runs: dict[str, list[dict[str, Any]]] = {}
        session: Session | None = None
        try:
            session = await Session.open(infra)
            await guard.run(self._variants(infra, session, runs))
        finally:
            try:
                if session is not None:
                    with contextlib.suppress(Exception):
                        await session.close()
            finally:
                await asyncio.to_thread(infra.close)  # stops every fleet still running, by pid
        self.out["runs"] = runs
        best: dict[str, dict[str, float]] = {}
        for name, rows in runs.items():
            best[name] = {}
            for key in (*BEST_MAX, *BEST_MIN):
                values = [r[key] for r in rows if r.get(key) is not None]
                if values:
                    best[name][key] = max(values) if key in BEST_MAX else min(values)
        self.out["best"] = best
        return self.out

    async def _baseline(self, infra: Infra, s: Session, variant: Variant, r: int) -> dict[str, Any]:
        fleet = Baseline(infra, self.workers, variant.loop, variant.codec)
        try:
            await fleet.start(s.nc)
            prefix = f"cb-{variant.name}-{r}"
            await throughput.run(s.nc, s.js, s.redis, fleet.target, make_tasks(prefix + "w", 300))
            pids = {f"baseline-{i}": p for i, p in enumerate(fleet.pids())}
            tasks = make_tasks(prefix, self.tasks)
            res, meter, others = await self._measured(
                prefix,
                {**pids, **infra.server_pids()},
                lambda: throughput.run(s.nc, s.js, s.redis, fleet.target, tasks),
            )
        finally:
            await asyncio.to_thread(fleet.stop)
        total = sum(meter.per_task_us(res.completed).values())
        return {
            "nats_tasks_per_second": round(res.per_second, 1),
            "nats_worker_cpu_us": _workers_us(meter, res.completed),
            "nats_total_cpu_us": round(total, 1),
            "nats_others_cores": others,
            "missing": res.missing,
        }

    async def _foundry(self, infra: Infra, s: Session, variant: Variant, r: int) -> dict[str, Any]:
        code = f"-{variant.code.name}" if variant.code else ""
        label = f"{variant.loop}-{variant.codec}{code}-r{r}"
        options = ClusterOptions(
            workers=self.workers,
            label=label,
            pythonpath=variant.shims(infra.root),
            extra_env=self.extra_env,
        )
        cluster = FoundryCluster(infra, options)
        try:
            await cluster.start(s.nc)
            pids = {**await cluster.pids(s.nc), **infra.server_pids()}
            prefix = f"cf-{label}"
            target = cluster.target
            await throughput.run(s.nc, s.js, s.redis, target, make_tasks(prefix + "w", 300))
            tasks = make_tasks(prefix, self.tasks)
            nats_run, nats_cpu, nats_others = await self._measured(
                prefix, pids, lambda: throughput.run(s.nc, s.js, s.redis, target, tasks)
            )
            bodies = http.bodies(prefix + "h", max(1, self.tasks // 2), AGENT_TYPE)
            http_run, http_cpu, http_others = await self._measured(
                prefix + "h",
                pids,
                lambda: http.run(
                    s.nc,
                    s.redis,
                    target,
                    cluster.gateway,
                    bodies,
                    self.http_clients,
                    token=cluster.token,
                ),
            )
            modules = {
                "worker": loaded(pids[cluster.worker_ids()[0]]),
                "gateway": loaded(pids["gateway"]),
            }
        finally:
            await cluster.stop()
        nats_us = nats_cpu.per_task_us(nats_run.completed)
        http_us = http_cpu.per_task_us(http_run.completed)
        return {
            "nats_tasks_per_second": round(nats_run.per_second, 1),
            "nats_worker_cpu_us": nats_us.get("workers"),
            "nats_total_cpu_us": round(sum(nats_us.values()), 1),
            "nats_others_cores": nats_others,
            "http_tasks_per_second": round(http_run.per_second, 1),
            "http_gateway_cpu_us": http_us.get("gateway"),
            "http_total_cpu_us": round(sum(http_us.values()), 1),
            "http_others_cores": http_others,
            "missing": nats_run.missing + http_run.missing,
            "loaded": modules,
        }


def _ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}×" if value and ref else "—"


def _cell(value: float | None, ref: float | None) -> str:
    return f"{value:,.0f} ({_ratio(value, ref)})" if value else "—"


def render(result: dict[str, Any]) -> str:
    best = result["best"]
    refs = {
        "baseline": best.get("baseline uvloop+orjson", {}),
        "foundry": best.get("foundry uvloop+orjson", {}),
    }
    lines = [
        f"uvloop / JSON codec comparison — {result['tasks']:,} tasks per NATS run, "
        f"{result['tasks'] // 2:,} through HTTP; best of {result['rounds']} round(s); "
        "(×: relative to uvloop+orjson; CPU is µs per task, lower is better)"
        + (f"; cluster env {result['env']}" if result.get("env") else ""),
        "",
        "| system, loop + codec | NATS tasks/s | worker CPU | all processes' CPU "
        "| HTTP tasks/s | gateway CPU | all processes' CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, vals in best.items():
        ref = refs[name.split()[0]]
        name = name.replace(" @", " from ")
        cells = [
            _cell(vals.get(key), ref.get(key))
            for key in (
                "nats_tasks_per_second",
                "nats_worker_cpu_us",
                "nats_total_cpu_us",
                "http_tasks_per_second",
                "http_gateway_cpu_us",
                "http_total_cpu_us",
            )
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + render_micro(result.get("micro", {}))


def render_micro(found: dict[str, Any]) -> str:
    """The in-process micro-measurements, as two small tables."""
    if not found:
        return ""
    lines = [
        "JSON a worker encodes and decodes per task (µs, one process, best of 3):",
        "",
        "| codec | decode task | encode result | encode event | encode heartbeat "
        "(16 in flight) | worker total per task |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in found["codec_us"].items():
        lines.append(
            f"| {name} | {row['decode_task']:.1f} | {row['encode_result']:.1f} | "
            f"{row['encode_event']:.1f} | {row['encode_heartbeat_16_in_flight']:.1f} | "
            f"{row['worker_per_task']:.1f} |"
        )
    lines += [
        "",
        "Event loop (µs, loopback stream round trip and task spawn, best of 3):",
        "",
        "| loop | stream round trip | task spawn |",
        "|---|---|---|",
    ]
    for name, row in found["loop_us"].items():
        lines.append(f"| {name} | {row['stream_round_trip_us']:.1f} | {row['task_spawn_us']:.1f} |")
    return "\n".join(lines)
