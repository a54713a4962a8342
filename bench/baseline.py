"""The baseline fleet: its stream and consumer, and N raw worker processes.

The stream is configured like Foundry's task stream (work-queue retention,
file storage, the same duplicate window, ``max_ack_pending`` and ``max_deliver``)
so that the difference measured is the worker and what it does per task, not
the broker's configuration. The workers connect to the same protected servers
as Foundry: NATS as the ``admin`` user (no role's allow-list names the
baseline's subjects), Redis as the cluster's ACL user, which may touch only
``foundry:*`` keys; the credentials reach them in their environment, never on
the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from bench import baseline_worker
from bench.infra import Infra, child_env
from bench.workload import Target, baseline_target
from foundry.natsauth import ADMIN
from foundry.settings import Settings

STREAM = "BENCH_BASELINE"
SUBJECT = "bench.baseline.tasks"
DONE = "bench.baseline.done"
READY = "bench.baseline.ready"
DURABLE = "baseline-workers"
KEY_PREFIX = "foundry:bench-baseline:result:"  # inside the ACL user's keys


@dataclass
class Baseline:
    infra: Infra
    workers: int
    loop: str = "uvloop"
    codec: str = "orjson"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def target(self) -> Target:
        return baseline_target(SUBJECT, DONE, KEY_PREFIX)

    @property
    def label(self) -> str:
        return f"{self.loop}+{self.codec}"

    async def provision(self, nc: NATS) -> None:
        defaults = Settings()
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(STREAM)
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[SUBJECT],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                discard=DiscardPolicy.NEW,
                duplicate_window=defaults.duplicate_window,
            )
        )
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=defaults.ack_wait,
                max_deliver=defaults.max_deliver,
                max_ack_pending=defaults.max_ack_pending,
            ),
        )

    async def start(self, nc: NATS, timeout: float = 30.0) -> None:
        """Provision, launch the workers, and wait until each says it is consuming."""
        await self.provision(nc)
        ready: set[str] = set()
        all_ready = asyncio.Event()

        async def on_ready(msg: Msg) -> None:
            ready.add(msg.data.decode())
            if len(ready) >= self.workers:
                all_ready.set()

        sub = await nc.subscribe(READY, cb=on_ready)
        env = child_env(
            {
                baseline_worker.NATS_URL_VAR: self.infra.bus.url(ADMIN),
                baseline_worker.REDIS_URL_VAR: self.infra.redis_url,
            }
        )
        for index in range(self.workers):
            args = [
                "-m",
                "bench.baseline_worker",
                "--stream",
                STREAM,
                "--durable",
                DURABLE,
                "--done",
                DONE,
                "--ready",
                READY,
                "--prefix",
                KEY_PREFIX,
                "--index",
                str(index),
                "--loop",
                self.loop,
                "--codec",
                self.codec,
            ]
            name = f"baseline-{self.label}-{index}"
            self.procs.append(self.infra.procs.start(name, args, env, sys.executable))
        try:
            await asyncio.wait_for(all_ready.wait(), timeout)
        finally:
            await sub.unsubscribe()

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def stop(self) -> None:
        for proc in self.procs:
            self.infra.procs.stop(proc, grace=5.0)
        self.procs.clear()
