"""Heal events: every decision is published on ``agents.events.heal.<action>``.

Events are core publishes on a subject the AGENT_EVENTS stream captures, so
they are kept, replayable and visible to ``nats sub 'agents.events.heal.>'``.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any

from nats.aio.client import Client as NATS

from foundry import codec
from foundry.names import Names
from healer.slots import Slot

log = logging.getLogger(__name__)


class Emitter:
    def __init__(self, names: Names) -> None:
        self.names = names
        self.host = socket.gethostname()
        self.nc: NATS | None = None
        self.counts: dict[tuple[str, str], int] = {}

    async def __call__(self, action: str, /, slot: Slot | None = None, **fields: Any) -> None:
        body: dict[str, Any] = {"kind": f"heal.{action}", "at": time.time(), "host": self.host}
        if slot is not None:
            body.update(
                slot=slot.name,
                slot_kind=slot.kind,
                agent_type=slot.agent_type or slot.name,
                worker_id=slot.name if slot.is_worker else None,
            )
        body.update(fields)
        key = (action, str(body.get("reason", "")))
        self.counts[key] = self.counts.get(key, 0) + 1
        log.info("heal.%s %s", action, {k: v for k, v in body.items() if k not in ("kind", "host")})
        if self.nc is None or not self.nc.is_connected:
            return  # nats itself may be what is being healed; the log keeps the record
        try:
            await self.nc.publish(self.names.heal_event(action), codec.dumps(body))
        except Exception as exc:
            log.warning("heal event not published: %r", exc)
