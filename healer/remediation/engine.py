"""Runs the policies: cool-downs, dry run, and one ``heal.remediate`` event per decision."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from foundry.contracts import HealAction
from healer.remediation.base import HostView, Outcome, Policy

log = logging.getLogger(__name__)
Emit = Callable[..., Awaitable[None]]


class Remediator:
    def __init__(self, policies: list[Policy], emit: Emit, dry_run: bool) -> None:
        self.policies = policies
        self.emit = emit
        self.dry_run = dry_run
        self.last: dict[str, float] = {}
        self.recent: list[dict[str, Any]] = []

    async def run_once(self, view: HostView) -> list[dict[str, Any]]:
        done = []
        for policy in self.policies:
            try:
                actions = policy.evaluate(view)
            except Exception:
                log.exception("policy %s failed to evaluate", policy.name)
                continue
            for action in actions:
                now = time.monotonic()
                if now - self.last.get(action.key, -1e18) < policy.cooldown:
                    continue
                self.last[action.key] = now
                if self.dry_run:
                    outcome = Outcome(
                        "dry_run", detail="FOUNDRY_REMEDIATION_DRY_RUN: nothing changed"
                    )
                else:
                    try:
                        outcome = await policy.apply(action)
                    except Exception as exc:
                        log.exception("policy %s failed to apply %s", policy.name, action.action)
                        outcome = Outcome("failed", detail=f"{type(exc).__name__}: {exc}")
                record = {
                    "policy": action.policy,
                    "step": action.action,
                    "target": action.target,
                    "reason": action.reason,
                    "outcome": outcome.outcome,
                    "before": action.before,
                    "after": outcome.after,
                    "detail": outcome.detail,
                    "dry_run": self.dry_run,
                }
                await self.emit(HealAction.REMEDIATE, **record)
                self.recent = [record, *self.recent[:19]]
                done.append(record)
        return done

    def state(self) -> dict[str, Any]:
        now = time.monotonic()
        policies = {}
        for policy in self.policies:
            waits = [
                policy.cooldown - (now - t)
                for k, t in self.last.items()
                if k.startswith(f"{policy.name}:")
            ]
            policies[policy.name] = {
                "cooldown_seconds": policy.cooldown,
                "cooldown_remaining_seconds": round(max([0.0, *waits]), 3),
                **policy.state(),
            }
        return {"dry_run": self.dry_run, "policies": policies, "recent": self.recent[:5]}
