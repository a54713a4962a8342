"""Memory policy: recycle (drain, then restart) the worker with the largest rss.

Host memory over FOUNDRY_MEMORY_THRESHOLD → the largest worker, at most one
per cool-down. A worker over FOUNDRY_WORKER_MAX_RSS → that worker. Recycling
stops its fetching, lets in-flight tasks finish, and relaunches the slot.
"""

from __future__ import annotations

from typing import Any

from healer.remediation.base import Action, HostView, Outcome, Policy


class MemoryPolicy(Policy):
    name = "memory"

    def evaluate(self, view: HostView) -> list[Action]:
        actions = []
        limit = self.settings.worker_max_rss
        if limit:
            for worker_id, beat in sorted(view.beats.items()):
                if beat.rss_bytes > limit:
                    actions.append(
                        Action(
                            self.name,
                            "recycle",
                            worker_id,
                            f"rss {beat.rss_bytes} bytes > {limit} (FOUNDRY_WORKER_MAX_RSS)",
                            before={"rss_bytes": beat.rss_bytes, "pid": beat.pid},
                        )
                    )
        sample = view.sample
        threshold = self.settings.memory_threshold
        if sample is not None and view.beats and sample.memory_percent >= threshold:
            worker_id, beat = max(view.beats.items(), key=lambda kv: kv[1].rss_bytes)
            if all(a.target != worker_id for a in actions):
                actions.append(
                    Action(
                        self.name,
                        "recycle",
                        worker_id,
                        f"host memory {sample.memory_percent:.1f}% ≥ {threshold:g}% "
                        "(FOUNDRY_MEMORY_THRESHOLD): recycling the largest worker",
                        before={
                            "memory_percent": sample.memory_percent,
                            "rss_bytes": beat.rss_bytes,
                            "pid": beat.pid,
                        },
                        cooldown_key="host",
                    )
                )
        return actions

    async def apply(self, action: Action) -> Outcome:
        after: dict[str, Any] = await self.actuator.recycle(action.target, "memory")
        return Outcome("done" if after.get("recycled") else "skipped", after)
