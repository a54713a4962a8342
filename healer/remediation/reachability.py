"""Broker and cache reachability: restart the embedded server, or raise an alarm.

The healer probes NATS and Redis itself (a monitor cannot report over a broker
that is down). After FOUNDRY_PROBE_FAILURES consecutive failed probes: restart
the embedded server when the healer runs it, otherwise record an alarm event.
A server process that exits is relaunched at once by the supervisor anyway.
"""

from __future__ import annotations

from typing import Any

from healer.remediation.base import Action, HostView, Outcome, Policy

SERVERS = {"nats": "nats-server", "redis": "redis-server"}


class ReachabilityPolicy(Policy):
    name = "reachability"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.failures = {"nats": 0, "redis": 0}

    def evaluate(self, view: HostView) -> list[Action]:
        actions = []
        for name, ok in (("nats", view.nats_ok), ("redis", view.redis_ok)):
            self.failures[name] = 0 if ok else self.failures[name] + 1
            if self.failures[name] < self.settings.probe_failures:
                continue
            server = SERVERS[name]
            embedded = self.actuator.runs_server(server)
            actions.append(
                Action(
                    self.name,
                    "restart" if embedded else "alarm",
                    server,
                    f"{name} unreachable for {self.failures[name]} probes "
                    "(FOUNDRY_PROBE_FAILURES)" + ("" if embedded else "; not run by this healer"),
                    before={"failed_probes": self.failures[name]},
                )
            )
        return actions

    async def apply(self, action: Action) -> Outcome:
        if action.action == "alarm":
            return Outcome("done", detail="alarm recorded; restart the server or fix the URL")
        after = await self.actuator.restart_server(action.target)
        return Outcome("done" if after.get("restarted") else "failed", after)
