"""Heal events: every decision is published on ``agents.events.heal.<action>``.

Events are core publishes on a subject the AGENT_EVENTS stream captures, so
they are kept, replayable and visible to ``nats sub 'agents.events.heal.>'``.
"""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.client import Client as NATS

from foundry.contracts import HealAction, HealEvent
from foundry.names import Names
from healer.slots import Slot

log = logging.getLogger(__name__)


class Emitter:
    """Builds, logs, counts and publishes heal events."""

    def __init__(self, names: Names, host: str) -> None:
        self.names = names
        self.host = host
        self.nc: NATS | None = None
        self.counts: dict[tuple[HealAction, str], int] = {}

    async def __call__(
        self,
        action: HealAction,
        /,
        slot: Slot | None = None,
        reason: str | None = None,
        agent_type: str | None = None,
        worker_id: str | None = None,
        **details: Any,
    ) -> None:
        event = HealEvent(
            action=action,
            host=self.host,
            slot=slot.name if slot is not None else None,
            slot_kind=slot.kind if slot is not None else None,
            agent_type=agent_type or (slot.agent_type or slot.name if slot is not None else None),
            worker_id=worker_id or (slot.name if slot is not None and slot.is_worker else None),
            reason=str(reason) if reason is not None else None,
            details=details,
        )
        key = (action, event.reason or "")
        self.counts[key] = self.counts.get(key, 0) + 1
        log.info("%s %s", event.kind, {k: v for k, v in event.to_json().items() if v is not None})
        if self.nc is None or not self.nc.is_connected:
            return  # nats itself may be what is being healed; the log keeps the record
        try:
            await self.nc.publish(self.names.heal_event(action.value), event.to_payload())
        except Exception as exc:
            log.warning("heal event not published: %r", exc)
