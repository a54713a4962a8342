"""Control requests on ``agents.control.*`` (request/reply, JSON).

- ``control.ping``    → ``{"ok": true, "pid": ..}``: is a healer running?
- ``control.status``  → every slot's state (the gateway merges it with heartbeats)
- ``control.heal``    → relaunch anything dead or silent now; says what it did
- ``control.release`` ``{"worker_id": ..}`` → release a quarantined slot
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry import codec
from foundry.names import Names

log = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, names: Names) -> None:
        self.names = names
        self.handlers: dict[str, Handler] = {"ping": self._ping}

    def route(self, verb: str, handler: Handler) -> None:
        self.handlers[verb] = handler

    async def start(self, nc: NATS) -> None:
        for verb in self.handlers:
            await nc.subscribe(self.names.control(verb), cb=self._dispatch(nc, verb))

    def _dispatch(self, nc: NATS, verb: str) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            try:
                body = codec.loads(msg.data) if msg.data.strip() else {}
                if not isinstance(body, dict):
                    raise ValueError("request body must be a JSON object")
                reply = await self.handlers[verb](body)
            except ValueError as exc:
                reply = {"error": f"bad request: {exc}"}
            except Exception as exc:
                log.exception("control %s failed", verb)
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            if msg.reply:
                await nc.publish(msg.reply, codec.dumps(reply))

        return handle

    async def _ping(self, _body: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "pid": os.getpid()}
