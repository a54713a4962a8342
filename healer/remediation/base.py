"""The remediation interface: a policy looks at the host and proposes actions.

Each policy has a name, a cool-down and honours dry-run: the engine asks it to
``evaluate`` the latest view of the host, and for every proposed action either
records it as ``dry_run`` or calls ``apply``. Every outcome is a
``heal.remediate`` event with before and after figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from foundry.contracts import Heartbeat, HostSample

if TYPE_CHECKING:
    from foundry.settings import Settings


class Actuator(Protocol):
    """What policies may change, provided by the healer."""

    async def recycle(self, worker_id: str, reason: str) -> dict[str, Any]:
        """Drain-then-restart a worker slot; returns figures (old and new pid)."""
        ...

    async def set_concurrency(self, agent_type: str, concurrency: int | None) -> None:
        """Tell the workers of a type to run at most ``concurrency`` tasks (None: default)."""
        ...

    def runs_server(self, name: str) -> bool:
        """Whether the healer supervises this embedded server (nats-server, redis-server)."""
        ...

    async def restart_server(self, name: str) -> dict[str, Any]:
        """Stop and relaunch an embedded server."""
        ...


@dataclass
class HostView:
    """What a policy sees: the latest host sample (if fresh), worker beats, our probes."""

    sample: HostSample | None
    beats: dict[str, Heartbeat]  # slot name → last heartbeat of its current process
    nats_ok: bool = True
    redis_ok: bool = True


@dataclass
class Action:
    """A proposed change: what, to what, and the evidence that triggered it."""

    policy: str
    action: str
    target: str
    reason: str
    before: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    cooldown_key: str = ""  # actions sharing a key share one cool-down (default: the target)

    @property
    def key(self) -> str:
        return f"{self.policy}:{self.cooldown_key or self.target}"


@dataclass
class Outcome:
    outcome: str  # done | failed | skipped | dry_run
    after: dict[str, Any] = field(default_factory=dict)
    detail: str = ""


class Policy:
    """Base class; subclasses override ``evaluate`` and ``apply``. Both default to no-ops."""

    name = "policy"

    def __init__(self, settings: Settings, actuator: Actuator) -> None:
        self.settings = settings
        self.actuator = actuator
        self.cooldown = settings.remediation_cooldown

    def evaluate(self, view: HostView) -> list[Action]:
        """Propose actions for this view of the host; changes nothing but the policy's own
        counters (e.g. consecutive hot samples)."""
        return []

    async def apply(self, action: Action) -> Outcome:
        """Carry out one action and report what changed."""
        return Outcome("skipped", detail="no-op policy")

    def state(self) -> dict[str, Any]:
        """Anything worth showing in the cluster status (e.g. throttled types)."""
        return {}
