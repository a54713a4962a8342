"""The system under test: ``python -m healer --services gateway`` with a fleet of echo workers.

The healer launches the gateway and ``FOUNDRY_FLEET=bench=<n>`` workers bound to
the built-in ``echo`` handler, exactly as in production. Only timings the bench
needs differ from the defaults, and they are listed in the report: a short
``FOUNDRY_STABLE_AFTER`` and a large ``FOUNDRY_MAX_RESTARTS`` so that ten kills in
a row are each a first failure (not a crash loop that backs off or quarantines),
and ``FOUNDRY_ACK_WAIT`` bounds how long a kill-under-load phase can take.

Credentials are those of a ``foundry up`` cluster: the healer connects as its
NATS user and holds every service role's password, handing each child its own;
everyone uses the Redis ACL user. With ``tls`` the cluster runs on the run's
TLS nats-server, in its own namespace, trusting the run's CA.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bench.credentials import AGENT_TYPE
from bench.infra import Infra, child_env
from bench.workload import Target, foundry_target
from foundry import codec
from foundry.apitokens import create_token
from foundry.childenv import env_for
from foundry.contracts import SlotKind
from foundry.hostid import worker_name
from foundry.natsauth import GATEWAY
from foundry.roles import role_env
from foundry.servers import free_port
from foundry.settings import Settings

__all__ = ["AGENT_TYPE", "Beats", "ClusterOptions", "FoundryCluster"]


@dataclass(frozen=True)
class ClusterOptions:
    workers: int = 2
    label: str = "default"
    ack_wait: float = 5.0
    heartbeat_interval: float = 1.0
    silence_timeout: float = 3.0
    stable_after: float = 1.0
    max_restarts: int = 1000
    tls: bool = False  # on the TLS nats-server (namespace ``tls``)
    pythonpath: tuple[Path, ...] = ()
    extra_env: tuple[tuple[str, str], ...] = ()  # --env FOUNDRY_X=Y: tuning experiments

    def overrides(self) -> dict[str, str]:
        """The settings that differ from the defaults, as environment variables."""
        return {
            "FOUNDRY_ACK_WAIT": f"{self.ack_wait:g}",
            "FOUNDRY_STABLE_AFTER": f"{self.stable_after:g}",
            "FOUNDRY_MAX_RESTARTS": str(self.max_restarts),
            "FOUNDRY_DRAIN_TIMEOUT": "2",
            **dict(self.extra_env),
        }


@dataclass
class Beats:
    """Heartbeats seen: when each (worker id, pid) first beat, and its latest pid."""

    first: dict[tuple[str, int], float] = field(default_factory=dict)
    latest: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    sub: Subscription | None = None

    async def start(self, nc: NATS, subject: str) -> None:
        self.sub = await nc.subscribe(subject, cb=self._on_beat)

    async def _on_beat(self, msg: Msg) -> None:
        now = time.perf_counter()
        try:
            body = codec.loads(msg.data)
            key = (str(body["worker_id"]), int(body["pid"]))
            state = body.get("state")
        except (ValueError, KeyError, TypeError):
            return
        if state == "stopped":
            return
        self.latest[key[0]] = key[1]
        if key not in self.first:
            self.first[key] = now
            self.changed.set()

    async def new_pid(
        self, worker_id: str, old_pid: int, after: float, timeout: float
    ) -> tuple[int, float]:
        """Wait for the first beat from ``worker_id`` by another pid, later than ``after``.

        Returns (pid, when its first beat arrived, perf_counter).
        """
        deadline = time.perf_counter() + timeout
        while True:
            for (wid, pid), at in self.first.items():
                if wid == worker_id and pid != old_pid and at > after:
                    return pid, at
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no new heartbeat from {worker_id} within {timeout:g}s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass


class FoundryCluster:
    """One healer (with gateway and workers) started and stopped by pid."""

    def __init__(self, infra: Infra, options: ClusterOptions) -> None:
        self.infra = infra
        self.options = options
        data_dir = infra.root / f"foundry-{options.label}"
        tokens = data_dir / "secrets" / "api-tokens.jsonl"
        tokens.unlink(missing_ok=True)  # a cluster of the same label may have run before
        self.token = create_token(tokens, "bench", ["submit", "read"])
        bus = infra.tls_bus if options.tls else infra.bus
        if bus is None:
            raise RuntimeError("a TLS cluster needs Infra.start(tls=True)")
        self.bus = bus
        settings = Settings(
            api_tokens=str(tokens),
            redis_url=infra.redis_url,
            fleet={AGENT_TYPE: options.workers},
            handlers={AGENT_TYPE: "echo"},
            data_dir=data_dir,
            gateway_port=free_port(),
            healer_port=free_port(),
            monitor_port=free_port(),
            ack_wait=options.ack_wait,
            heartbeat_interval=options.heartbeat_interval,
            silence_timeout=options.silence_timeout,
            stable_after=options.stable_after,
            max_restarts=options.max_restarts,
            drain_timeout=2.0,
        )
        self.settings = bus.for_healer(settings)
        self.names = self.settings.names
        self.beats = Beats()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra: list[subprocess.Popen[bytes]] = []  # gateways beside the healer's

    @property
    def target(self) -> Target:
        return foundry_target(self.names, AGENT_TYPE)

    @property
    def gateway(self) -> tuple[str, int]:
        return "127.0.0.1", self.settings.gateway_port

    def worker_ids(self) -> list[str]:
        return [
            worker_name(AGENT_TYPE, i, self.settings.host_id) for i in range(self.options.workers)
        ]

    async def start(self, nc: NATS, timeout: float = 60.0) -> float:
        """Launch the healer; wait for every worker's beat and a healthy gateway.

        Returns the seconds from launch to ready.
        """
        await self.beats.start(nc, self.names.heartbeat(AGENT_TYPE, "*"))
        env = child_env(
            {**self.settings.to_env(), **dict(self.options.extra_env)},
            list(self.options.pythonpath),
        )
        started = time.perf_counter()
        self.infra.procs.adopt_run_dir(self.settings.data_dir / "run")
        self.proc = self.infra.procs.start(
            f"healer-{self.options.label}", ["-m", "healer", "--services", "gateway"], env
        )
        deadline = started + timeout
        wanted = set(self.worker_ids())
        while not wanted <= set(self.beats.latest):
            self._check_alive()
            if time.perf_counter() > deadline:
                raise TimeoutError(f"workers did not beat within {timeout:g}s; see the logs")
            await asyncio.sleep(0.05)
        await _wait_healthy(self.gateway, deadline, self._check_alive)
        return time.perf_counter() - started

    async def extra_gateway(
        self, name: str, overrides: dict[str, str], timeout: float = 30.0
    ) -> tuple[str, int]:
        """One more gateway for this cluster, launched as the healer launches its own.

        Same settings (with ``--env`` extras), its role's NATS user and only the
        secrets a service gets, then ``overrides`` and a port of its own; ready when
        ``/health`` answers. The healer does not supervise it; :meth:`stop` stops it.
        """
        view = Settings.from_env({**self.settings.to_env(), **dict(self.options.extra_env)})
        port = free_port()
        env = {
            **env_for(view, SlotKind.SERVICE),
            **role_env(view, GATEWAY),
            **overrides,
            "FOUNDRY_GATEWAY_PORT": str(port),
        }
        label = f"gateway-{name}-{self.options.label}"
        proc = self.infra.procs.start(
            label, ["-m", "gateway"], child_env(env, list(self.options.pythonpath))
        )
        self.extra.append(proc)

        def alive() -> None:
            if proc.poll() is not None:
                log = self.infra.procs.log_dir / f"{label}.log"
                raise RuntimeError(f"{label} exited with {proc.returncode}; see {log}")

        address = ("127.0.0.1", port)
        await _wait_healthy(address, time.perf_counter() + timeout, alive)
        return address

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log = self.infra.procs.log_dir / f"healer-{self.options.label}.log"
            raise RuntimeError(f"the healer exited with {self.proc.returncode}; see {log}")

    async def slots(self, nc: NATS) -> dict[str, dict[str, Any]]:
        reply = await nc.request(self.names.control("status"), b"{}", timeout=5)
        return {s["slot"]: s for s in codec.loads(reply.data)["slots"]}

    async def pids(self, nc: NATS) -> dict[str, int]:
        """Role → pid: the healer, the gateway and each worker slot."""
        out: dict[str, int] = {}
        if self.proc is not None:
            out["healer"] = self.proc.pid
        for name, slot in (await self.slots(nc)).items():
            if slot["pid"]:
                out[name] = int(slot["pid"])
        return out

    async def stop_extra(self) -> None:
        """Stop the gateways :meth:`extra_gateway` started, by pid."""
        while self.extra:
            await asyncio.to_thread(self.infra.procs.stop, self.extra.pop(), 10.0)

    async def stop(self) -> None:
        """Stop the healer by pid (it drains and stops the fleet and the gateway)."""
        await self.stop_extra()
        if self.beats.sub is not None:
            with contextlib.suppress(Exception):
                await self.beats.sub.unsubscribe()
            self.beats.sub = None
        if self.proc is not None:
            await asyncio.to_thread(self.infra.procs.stop, self.proc, 30.0)
            self.proc = None


async def _wait_healthy(
    address: tuple[str, int], deadline: float, check: Callable[[], None]
) -> None:
    """Poll a gateway's ``/health`` until it answers 200; ``check`` raises if it died."""
    host, port = address
    async with aiohttp.ClientSession() as http:
        while True:
            check()
            try:
                async with http.get(f"http://{host}:{port}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.perf_counter() > deadline:
                raise TimeoutError(f"gateway on {port} not healthy in time; see the logs")
            await asyncio.sleep(0.05)
