"""The healer service: wires supervisor, liveness, watch, dead letters, control, autoscaling
and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import psutil
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry.connect import connect_nats, connect_redis
from foundry.contracts import (
    ControlVerb,
    HealAction,
    Heartbeat,
    HostSample,
    SlotKind,
    SlotState,
    WorkerState,
)
from foundry.hostid import worker_name
from foundry.provision import provision
from foundry.rejections import REJECTIONS
from foundry.runtime import spawn
from foundry.servers import port_open
from foundry.settings import Settings
from foundry.store import TaskStore
from healer import httpapp
from healer.actuator import HealerActuator
from healer.autoscale import Autoscaler, Decision, ScaleConfig, Step, TypeView
from healer.autoscale import HostView as ScaleHost
from healer.control import ControlServer
from healer.deadletter import DeadLetters
from healer.events import Emitter
from healer.fleet import build_slots, run_dir, scalable_names, worker_slot
from healer.leader import Leadership
from healer.liveness import Liveness
from healer.metrics import healer_registry
from healer.operations import Operations
from healer.remediation import HostView, Remediator, default_policies
from healer.slots import RestartPolicy, Slot
from healer.supervisor import Supervisor
from healer.unserved import UnservedTypes
from healer.watch import KILL_GRACE, Watch

log = logging.getLogger(__name__)


class HealerService:
    def __init__(self, settings: Settings, services: list[str], embedded: list[str]) -> None:
        self.settings = settings
        self.names = settings.names
        self.host_name = settings.host_id
        self.emit = Emitter(self.names, self.host_name)
        policy = RestartPolicy(
            max_restarts=settings.max_restarts,
            window=settings.restart_window,
            backoff_max=settings.backoff_max,
            stable_after=settings.stable_after,
        )
        self.supervisor = Supervisor(run_dir(settings), policy, self.emit, KILL_GRACE)
        for slot in build_slots(settings, services, embedded):
            self.supervisor.add(slot)
        self.liveness = Liveness(
            self.names,
            self.host_name,
            settings.silence_timeout,
            max(settings.silence_timeout, 10.0),
            self._worker_slot,
        )
        self.watch = Watch(
            self.supervisor, self.liveness, self.emit, settings.silence_timeout, self.leading
        )
        self.nc: NATS | None = None
        self.redis: aioredis.Redis | None = None
        self.actuator = HealerActuator(
            self.supervisor, self.names, lambda: self.nc, settings.drain_timeout + 2.0
        )
        # The disk policy refuses dangerous FOUNDRY_CLEAN_PATHS here, before anything runs.
        self.remediator = Remediator(
            [policy(settings, self.actuator) for policy in default_policies],
            self.emit,
            settings.remediation_dry_run,
        )
        self.host_sample: HostSample | None = None
        self.operations = Operations(
            self.supervisor,
            self.liveness,
            self.watch,
            self.remediator,
            lambda: self.host_sample.to_json() if self.host_sample else None,
            settings.host_id,
            self.leading,
        )
        self.autoscaler = Autoscaler(settings.fleet_ranges, ScaleConfig.from_settings(settings))
        self._consumer_errors: set[str] = set()  # types whose consumer info last failed
        self.control = ControlServer(self.names, settings.host_id)
        self.control.route(ControlVerb.STATUS, self.operations.status)
        self.control.route(ControlVerb.HEAL, self.operations.heal)
        self.control.route(ControlVerb.RELEASE, self.operations.release)
        self.control.route(ControlVerb.CANCEL, self.operations.cancel)
        self.http_port: int | None = None
        self.leadership: Leadership | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def leading(self) -> bool:
        """Whether this healer does the cluster-wide duties now (it holds the leader lease)."""
        return self.leadership is not None and self.leadership.held

    def _worker_slot(self, worker_id: str) -> Any:
        slot = self.supervisor.slots.get(worker_id)
        return slot if slot is not None and slot.is_worker else None

    def _nats_ok(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    # ---- start / stop ----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        sup = self.supervisor
        replaced = await asyncio.to_thread(sup.replace_leftovers, scalable_names(self.settings))
        if replaced:
            log.warning("replaced %d process(es) left by an earlier healer", len(replaced))
        for slot in sup.by_kind(SlotKind.SERVER):
            await sup.launch(slot)
        await self._wait_for_servers()
        self.nc = await connect_nats(self.settings, "healer")
        self.emit.nc = self.nc
        self.redis = await connect_redis(self.settings)
        await provision(self.nc.jetstream(), self.settings)
        self.leadership = Leadership(self.nc.jetstream(), self.settings, self.emit)
        await self.leadership.provision()
        standing_down = asyncio.Event()  # set at stop: the lease is released, not cancelled
        elect = asyncio.create_task(self.leadership.run(standing_down))
        store = TaskStore(
            self.redis,
            self.names,
            self.settings.result_ttl,
            min_replicas=self.settings.redis_min_replicas,
            wait_timeout=self.settings.redis_wait_timeout,
        )
        deadletters = DeadLetters(
            self.nc,
            store,
            self.names,
            self.settings.poison_kills,
            self.settings.max_deliver,
            self.emit,
            self.leading,
            keep_seconds=2.0 * self.settings.lease_ttl,
            nak_within=self.settings.ack_wait,
        )
        self.leadership.on_elected.append(deadletters.advisories.on_elected)
        self.watch.deadletters = deadletters
        self.operations.connected(self.nc, store, self.names)
        await deadletters.start()
        await self.liveness.start(self.nc)
        await self.control.start(self.nc)
        await self.nc.subscribe(self.names.host(self.host_name), cb=self._on_host_sample)
        registry = healer_registry(sup, self.emit, self.fleet_targets)
        app = httpapp.create_app(sup, registry, self._nats_ok)
        runner, self.http_port = await httpapp.serve(
            app, self.settings.gateway_host, self.settings.healer_port
        )
        for slot in sup.slots.values():
            if slot.kind is not SlotKind.SERVER:
                await sup.launch(slot)
        log.info("healer supervising %d slot(s); %s", len(sup.slots), self.settings.describe())
        unserved = UnservedTypes(
            self.nc.jetstream(),
            self.names,
            deadletters,
            self.settings.unserved_grace,
            self.leading,
        )
        loops = [self.watch.run(), self._remediate(), unserved.run()]
        if self.autoscaler.ranges:
            loops.append(self._autoscale())
        for loop in loops:
            spawn(loop, self._tasks)
        await stop.wait()
        log.info("stopping: draining the fleet")
        standing_down.set()
        try:
            await asyncio.wait_for(elect, 3.0)
        except Exception as exc:
            log.warning("leader lease not released cleanly: %r", exc)
        for task in list(self._tasks):
            task.cancel()
        await sup.shutdown(self.settings.drain_timeout + 2.0)
        await runner.cleanup()
        await self.liveness.stop()
        with contextlib.suppress(Exception):
            await self.nc.close()
        await self.redis.aclose()

    async def _wait_for_servers(self) -> None:
        for slot in self.supervisor.by_kind(SlotKind.SERVER):
            if slot.port is None:
                continue
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(port_open, "127.0.0.1", slot.port):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{slot.name} did not listen on port {slot.port}")
                await asyncio.sleep(0.05)

    # ---- remediation -----------------------------------------------------------------
    async def _on_host_sample(self, msg: Msg) -> None:
        sample = REJECTIONS.parse(lambda: HostSample.from_payload(msg.data), msg.subject)
        if sample is not None:
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
        if sample is not None and time.time() - sample.at > self.settings.host_interval * 3:
            sample = None
        beats = {}
        for slot in self.supervisor.by_kind(SlotKind.WORKER):
            beat = self.liveness.last(slot)
            if beat is not None and slot.state is SlotState.RUNNING:
                beats[slot.name] = beat
        redis_ok = False
        if self.redis is not None:
            with contextlib.suppress(Exception):
                redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 1.0))
        return HostView(sample, beats, nats_ok=self._nats_ok(), redis_ok=redis_ok)

    # ---- autoscaling -----------------------------------------------------------------
    async def _autoscale(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scale_interval)
            try:
                await self.scale_once()
            except Exception:
                log.exception("autoscale check failed")

    async def scale_once(self) -> list[Decision]:
        """One check of every type with a range: figures in, decisions carried out."""
        if self.nc is None or self.supervisor.shutting_down:
            return []
        js = self.nc.jetstream()
        views = []
        for agent_type in self.autoscaler.ranges:
            pending = await self._pending(js, agent_type)
            if pending is not None:
                views.append(self._type_view(agent_type, pending))
        decisions = self.autoscaler.decide(views, self._scale_host())
        for decision in decisions:
            await self._carry_out(decision)
        return decisions

    async def _pending(self, js: Any, agent_type: str) -> int | None:
        consumer = self.names.consumer(agent_type)
        try:
            info = await asyncio.wait_for(js.consumer_info(self.names.tasks_stream, consumer), 2.0)
        except Exception as exc:
            if agent_type not in self._consumer_errors:
                log.warning("autoscale: no consumer info for %s: %r", consumer, exc)
                self._consumer_errors.add(agent_type)
            return None
        self._consumer_errors.discard(agent_type)
        return int(info.num_pending or 0)

    def _type_slots(self, agent_type: str) -> list[Slot]:
        sup = self.supervisor
        return [
            s
            for s in sup.by_kind(SlotKind.WORKER)
            if s.agent_type == agent_type and s.name not in sup.retiring
        ]

    def _type_view(self, agent_type: str, pending: int) -> TypeView:
        slots = self._type_slots(agent_type)
        beats: list[Heartbeat] = []
        idle: list[Slot] = []
        for slot in slots:
            beat = self.liveness.last(slot)
            if slot.state is not SlotState.RUNNING or beat is None:
                continue
            if self.liveness.silent_for(slot) is not None:
                continue
            beats.append(beat)
            if beat.state is WorkerState.IDLE and not beat.in_flight:
                idle.append(slot)
        idle.sort(key=lambda s: s.index or 0, reverse=True)
        return TypeView(
            agent_type,
            pending,
            target=len(slots),
            live=len(beats),
            starting=sum(1 for s in slots if s.state is SlotState.STARTING),
            idle=tuple(s.name for s in idle),
            worker_cpu_percent=sum(b.cpu_percent for b in beats) / len(beats) if beats else 0.0,
            worker_rss_bytes=sum(b.rss_bytes for b in beats) // len(beats) if beats else 0,
        )

    def _scale_host(self) -> ScaleHost:
        sample = self.host_sample
        if sample is None or time.time() - sample.at > self.settings.host_interval * 3:
            return ScaleHost(None, None)
        return ScaleHost(
            sample.cpu_percent,
            sample.memory_percent,
            psutil.cpu_count() or 1,
            psutil.virtual_memory().total,
        )

    async def _carry_out(self, decision: Decision) -> None:
        sup = self.supervisor
        added: list[str] = []
        if decision.step is Step.UP:
            taken = {s.name for s in sup.slots.values()}
            index = 0
            for _ in range(decision.to_count - decision.from_count):
                while worker_name(decision.agent_type, index, self.settings.host_id) in taken:
                    index += 1
                slot = worker_slot(self.settings, decision.agent_type, index)
                taken.add(slot.name)
                await sup.grow(slot)
                added.append(slot.name)
        elif decision.step is Step.DOWN:
            grace = self.settings.drain_timeout + 2.0
            for name in decision.retire:
                surplus = sup.slots.get(name)
                if surplus is not None:
                    spawn(sup.retire(surplus, grace), self._tasks)
        await self.emit(
            HealAction.SCALE,
            agent_type=decision.agent_type,
            reason=decision.reason,
            added=added,
            **decision.details(),
        )

    def fleet_targets(self) -> dict[str, tuple[int, int, int]]:
        """Per type: (minimum, worker slots now, maximum), for /metrics."""
        return {
            agent_type: (bounds.minimum, len(self._type_slots(agent_type)), bounds.maximum)
            for agent_type, bounds in self.settings.fleet_ranges.items()
        }
