"""The healer service: wires supervisor, liveness, dead letters, control and HTTP together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from typing import Any

import psutil
import redis.asyncio as aioredis
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.connect import connect_nats, connect_redis
from foundry.provision import provision
from foundry.servers import port_open
from foundry.settings import Settings
from foundry.store import TaskStore
from healer.control import ControlServer
from healer.deadletter import DeadLetters
from healer.events import Emitter
from healer.fleet import build_slots, run_dir
from healer.liveness import Liveness
from healer.metrics import HealerMetrics
from healer.remediation import HostView, Remediator, default_policies
from healer.remediation.disk import check_clean_paths
from healer.slots import (
    QUARANTINED,
    RUNNING,
    SERVER,
    STOPPED,
    WORKER,
    Death,
    RestartPolicy,
    Slot,
)
from healer.supervisor import Supervisor

log = logging.getLogger(__name__)
KILL_GRACE = 0.5  # a silent worker gets this long after SIGTERM before SIGKILL


class HealerService:
    def __init__(self, settings: Settings, services: list[str], embedded: list[str]) -> None:
        self.settings = settings
        self.names = settings.names
        self.emit = Emitter(self.names)
        policy = RestartPolicy(
            max_restarts=settings.max_restarts,
            window=settings.restart_window,
            backoff_max=settings.backoff_max,
            stable_after=settings.stable_after,
        )
        self.supervisor = Supervisor(run_dir(settings), policy, self.emit, KILL_GRACE)
        for slot in build_slots(settings, services, embedded):
            self.supervisor.add(slot)
        self.supervisor.on_death = self._on_death
        self.liveness = Liveness(
            self.names, settings.silence_timeout, max(settings.silence_timeout, 10.0)
        )
        self.metrics = HealerMetrics(self)
        self.control = ControlServer(self.names)
        self.control.route("status", self._status)
        self.control.route("heal", self._heal)
        self.control.route("release", self._release)
        self.nc: NATS | None = None
        self.redis: aioredis.Redis | None = None
        self.deadletters: DeadLetters | None = None
        self.http_port: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        check_clean_paths(settings)  # refuse dangerous FOUNDRY_CLEAN_PATHS before anything runs
        self.remediator = Remediator(
            [policy(settings, self) for policy in default_policies],
            self.emit,
            settings.remediation_dry_run,
        )
        self.host_sample: dict[str, Any] | None = None
        self.host_name = socket.gethostname()

    # ---- start / stop ----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        sup = self.supervisor
        replaced = await asyncio.to_thread(sup.replace_leftovers)
        if replaced:
            log.warning("replaced %d process(es) left by an earlier healer", len(replaced))
        servers = sup.by_kind(SERVER)
        for slot in servers:
            await sup.launch(slot)
        await self._wait_for_servers()
        self.nc = await connect_nats(self.settings, "healer")
        self.emit.nc = self.nc
        self.redis = await connect_redis(self.settings)
        await provision(self.nc.jetstream(), self.settings)
        store = TaskStore(self.redis, self.names, self.settings.result_ttl)
        self.deadletters = DeadLetters(
            self.nc, store, self.names, self.settings.poison_kills, self.emit
        )
        await self.deadletters.start()
        await self.liveness.start(self.nc)
        await self.control.start(self.nc)
        await self.nc.subscribe(self.names.host(self.host_name), cb=self._on_host_sample)
        runner = await self._start_http()
        for slot in sup.slots.values():
            if slot.kind != SERVER:
                await sup.launch(slot)
        log.info("healer supervising %d slot(s); %s", len(sup.slots), self.settings.describe())
        watcher = asyncio.create_task(self._watch())
        remediation = asyncio.create_task(self._remediate())
        await stop.wait()
        log.info("stopping: draining the fleet")
        watcher.cancel()
        remediation.cancel()
        await sup.shutdown(self.settings.drain_timeout + 2.0)
        await runner.cleanup()
        await self.liveness.stop()
        with contextlib.suppress(Exception):
            await self.nc.close()
        await self.redis.aclose()

    async def _wait_for_servers(self) -> None:
        for slot in self.supervisor.by_kind(SERVER):
            port = int(
                slot.command[slot.command.index("-p" if "-p" in slot.command else "--port") + 1]
            )
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(port_open, "127.0.0.1", port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{slot.name} did not listen on port {port}")
                await asyncio.sleep(0.05)

    async def _start_http(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self.metrics.serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.gateway_host, self.settings.healer_port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.healer_port
        return runner

    # ---- watching --------------------------------------------------------------------
    async def _watch(self) -> None:
        period = min(0.25, self.settings.silence_timeout / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._check_silence()
            except Exception:
                log.exception("silence check failed")

    async def _check_silence(self) -> None:
        for slot in self.supervisor.by_kind(WORKER):
            silent = self.liveness.silent_for(slot)
            if silent is not None:
                await self._kill_silent(slot, silent)
        ours = set(self.supervisor.slots)
        for beat in self.liveness.silent_foreign(ours):
            if beat.in_flight and self.deadletters is not None:
                evidence = {
                    "worker_id": beat.worker_id,
                    "pid": beat.pid,
                    "reason": "silent",
                    "rss_bytes": beat.rss_bytes,
                }
                await self.deadletters.worker_died(beat.agent_type, beat.in_flight, evidence)
            await self.emit(
                "silent_foreign",
                agent_type=beat.agent_type,
                worker_id=beat.worker_id,
                pid=beat.pid,
                reason="silent",
                tasks_redelivered=len(beat.in_flight),
            )

    async def _kill_silent(self, slot: Slot, silent: float) -> None:
        slot.silent_seconds = silent
        await self.emit(
            "kill_silent", slot=slot, reason="silent", pid=slot.pid, silent_seconds=round(silent, 3)
        )
        grace = KILL_GRACE
        with contextlib.suppress(psutil.Error, TypeError):
            if psutil.Process(slot.pid).status() == psutil.STATUS_STOPPED:
                grace = 0.0  # a stopped process cannot act on SIGTERM: kill it now
        task = asyncio.create_task(self.supervisor.terminate(slot, "silent", grace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_death(self, slot: Slot, death: Death, reason: str) -> None:
        if reason == "recycle":
            death.excused = True  # we stopped it on purpose
        if not slot.is_worker or self.deadletters is None:
            return
        beat = self.liveness.last(slot)
        if beat is None or not beat.in_flight:
            return
        death.task_ids = frozenset(
            str(e.get("task_id")) for e in beat.in_flight if e.get("running", True)
        )
        evidence = {
            "worker_id": slot.name,
            "pid": slot.pid,
            "exit_code": death.exit_code,
            "signal": death.signal,
            "rss_bytes": beat.rss_bytes,
            "reason": reason,
            "at": time.time(),
        }
        poisoned = set(
            await self.deadletters.worker_died(slot.agent_type or "", beat.in_flight, evidence)
        )
        if poisoned:  # the slot is not quarantined for the task's sake
            kept = [d for d in slot.deaths if not (d.task_ids & poisoned)]
            slot.deaths.clear()
            slot.deaths.extend(kept)
            death.excused = True

    # ---- remediation -----------------------------------------------------------------
    async def _on_host_sample(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, TypeError):
            sample = codec.loads(msg.data)
            if isinstance(sample, dict):
                self.host_sample = sample

    async def _remediate(self) -> None:
        interval = self.settings.host_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.remediator.run_once(await self._host_view())
            except Exception:
                log.exception("remediation round failed")

    async def _host_view(self) -> HostView:
        sample = self.host_sample
        fresh = self.settings.host_interval * 3
        if sample is not None and time.time() - float(sample.get("at", 0)) > fresh:
            sample = None
        beats = {}
        for slot in self.supervisor.by_kind(WORKER):
            beat = self.liveness.last(slot)
            if beat is not None and slot.state == RUNNING:
                beats[slot.name] = beat
        redis_ok = False
        if self.redis is not None:
            with contextlib.suppress(Exception):
                redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        nats_ok = self.nc is not None and self.nc.is_connected
        return HostView(sample, beats, nats_ok=nats_ok, redis_ok=redis_ok)

    # Actuator: what remediation policies may change
    async def recycle(self, worker_id: str, reason: str) -> dict[str, Any]:
        slot = self.supervisor.slots.get(worker_id)
        if slot is None or slot.state != RUNNING:
            return {"recycled": False, "why": "not running"}
        old_pid = slot.pid
        await self.supervisor.terminate(slot, "recycle", self.settings.drain_timeout + 2.0)
        new_pid = await self._relaunched(slot, old_pid)
        return {"recycled": True, "old_pid": old_pid, "new_pid": new_pid, "reason": reason}

    @staticmethod
    async def _relaunched(slot: Slot, old_pid: int | None, within: float = 5.0) -> int | None:
        """The slot's new pid once the supervisor relaunched it (None if it did not, in time)."""
        for _ in range(int(within / 0.05)):
            if slot.pid != old_pid:
                return slot.pid
            await asyncio.sleep(0.05)
        return None

    async def set_concurrency(self, agent_type: str, concurrency: int | None) -> None:
        assert self.nc is not None
        body = codec.dumps({"concurrency": concurrency})
        await self.nc.publish(self.names.worker_control(agent_type), body)

    def runs_server(self, name: str) -> bool:
        slot = self.supervisor.slots.get(name)
        return slot is not None and slot.kind == SERVER

    async def restart_server(self, name: str) -> dict[str, Any]:
        slot = self.supervisor.slots[name]
        old_pid = slot.pid
        await self.supervisor.terminate(slot, "unreachable", 5.0)
        new_pid = await self._relaunched(slot, old_pid)
        return {"restarted": new_pid is not None, "old_pid": old_pid, "new_pid": new_pid}

    # ---- control ---------------------------------------------------------------------
    async def _status(self, _body: dict[str, Any]) -> dict[str, Any]:
        return {
            "slots": [s.to_json() for s in self.supervisor.slots.values()],
            "pid": os.getpid(),
            "remediation": self.remediator.state(),
            "host": self.host_sample,
        }

    async def _heal(self, _body: dict[str, Any]) -> dict[str, Any]:
        healed = [s.name for s in await self.supervisor.relaunch_waiting()]
        for slot in self.supervisor.by_kind(WORKER):
            silent = self.liveness.silent_for(slot)
            if silent is not None:
                await self._kill_silent(slot, silent)
                healed.append(slot.name)
        for slot in self.supervisor.slots.values():
            if slot.state == STOPPED and slot.name not in healed:
                await self.supervisor.launch(slot, "manual")
                healed.append(slot.name)
        quarantined = [s.name for s in self.supervisor.slots.values() if s.state == QUARANTINED]
        message = f"healed {len(healed)} worker(s)" if healed else "nothing to heal"
        if quarantined:
            message += f"; quarantined (release them explicitly): {', '.join(quarantined)}"
        return {
            "healed_workers": healed,
            "count": len(healed),
            "message": message,
            "quarantined": quarantined,
        }

    async def _release(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("worker_id")
        slot = self.supervisor.slots.get(str(name))
        if slot is None:
            return {"error": f"no slot {name!r}", "code": "not_found"}
        released = await self.supervisor.release(slot)
        return {"released": released, "worker_id": slot.name, "state": slot.state}

    async def _health(self, _request: web.Request) -> web.Response:
        nats_ok = self.nc is not None and self.nc.is_connected
        states: dict[str, int] = {}
        for slot in self.supervisor.slots.values():
            states[slot.state] = states.get(slot.state, 0) + 1
        body = {"status": "healthy" if nats_ok else "degraded", "nats": nats_ok, "slots": states}
        return web.json_response(body, status=200 if nats_ok else 503)
