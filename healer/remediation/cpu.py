"""CPU policy: lower the fetch concurrency of the busiest type while the host runs hot.

CPU over FOUNDRY_CPU_THRESHOLD for FOUNDRY_CPU_SAMPLES consecutive samples →
halve the concurrency of the agent type using the most CPU (a control message
on ``agents.control.workers.<type>``). After as many consecutive cool samples
the default is restored.
"""

from __future__ import annotations

from typing import Any

from healer.remediation.base import Action, HostView, Outcome, Policy


class CpuPolicy(Policy):
    name = "cpu"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.hot = 0
        self.cool = 0
        self.throttled: dict[str, int] = {}  # agent type → concurrency it runs at now

    def evaluate(self, view: HostView) -> list[Action]:
        sample = view.sample
        if sample is None:
            return []
        cpu = sample.cpu_percent
        if cpu >= self.settings.cpu_threshold:
            self.hot, self.cool = self.hot + 1, 0
        else:
            self.hot, self.cool = 0, self.cool + 1
        needed = self.settings.cpu_samples
        if self.hot >= needed:
            usage: dict[str, float] = {}
            current: dict[str, int] = {}
            for beat in view.beats.values():
                usage[beat.agent_type] = usage.get(beat.agent_type, 0.0) + beat.cpu_percent
                current[beat.agent_type] = max(current.get(beat.agent_type, 1), beat.concurrency)
            if not usage:
                return []
            busiest = max(usage, key=lambda t: usage[t])
            lower = max(1, current[busiest] // 2)
            if self.throttled.get(busiest) == lower or current[busiest] <= 1:
                return []
            return [
                Action(
                    self.name,
                    "throttle",
                    busiest,
                    f"cpu {cpu:.0f}% ≥ {self.settings.cpu_threshold:g}% for {self.hot} samples "
                    f"(FOUNDRY_CPU_THRESHOLD); {busiest} uses the most",
                    before={"cpu_percent": cpu, "concurrency": current[busiest]},
                    params={"concurrency": lower},
                )
            ]
        if self.cool >= needed and self.throttled:
            return [
                Action(
                    self.name,
                    "restore",
                    agent_type,
                    f"cpu {cpu:.0f}% below the threshold for {self.cool} samples",
                    before={"cpu_percent": cpu, "concurrency": level},
                    cooldown_key=f"restore:{agent_type}",
                )
                for agent_type, level in sorted(self.throttled.items())
            ]
        return []

    async def apply(self, action: Action) -> Outcome:
        if action.action == "throttle":
            level = int(action.params["concurrency"])
            await self.actuator.set_concurrency(action.target, level)
            self.throttled[action.target] = level
            return Outcome("done", {"concurrency": level})
        await self.actuator.set_concurrency(action.target, None)
        self.throttled.pop(action.target, None)
        return Outcome("done", {"concurrency": "default"})

    def state(self) -> dict[str, Any]:
        return {"throttled": dict(self.throttled), "hot_samples": self.hot}
