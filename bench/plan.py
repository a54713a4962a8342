"""How much work each phase does: the full plan (``make bench``) and ``--quick``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Plan:
    workers: int = 2
    tasks: int = 12_000  # per NATS throughput run
    rounds: int = 3  # baseline / Foundry alternate; the best run of each counts
    warmup: int = 500
    http_tasks: int = 10_000
    http_clients: int = 64
    http_rounds: int = 2  # with a token / without alternate; the best run of each counts
    latency: tuple[tuple[float, float], ...] = ((200.0, 5.0), (1000.0, 4.0))  # (rate, seconds)
    kills: int = 10
    stops: int = 1
    load_tasks: int = 6_000
    load_kills: int = 2
    heartbeat_interval: float = 1.0  # the defaults: what users run
    silence_timeout: float = 3.0
    ack_wait: float = 5.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = Plan()
QUICK = Plan(
    tasks=300,
    rounds=1,
    warmup=50,
    http_tasks=300,
    http_clients=16,
    http_rounds=1,
    latency=((200.0, 1.0),),
    kills=2,
    stops=1,
    load_tasks=400,
    load_kills=1,
    heartbeat_interval=0.2,
    silence_timeout=1.0,
    ack_wait=3.0,
)


def scaled(plan: Plan, tasks: int | None) -> Plan:
    """The plan with another task count for the throughput runs (HTTP gets half)."""
    if tasks is None:
        return plan
    return replace(plan, tasks=tasks, http_tasks=max(1, tasks // 2))
