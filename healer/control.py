"""Control requests on ``agents.control.<verb>`` (request/reply, JSON).

- ``control.ping``    → ``{"ok": true, "pid": ..}``: is a healer running?
- ``control.status``  → every slot's state (the gateway merges it with heartbeats)
- ``control.heal``    → relaunch anything dead or silent now; says what it did
- ``control.release`` ``{"worker_id": ..}`` → release a quarantined slot

Every healer of the cluster subscribes to the same subjects (no queue group), so a
request reaches them all: the gateway gathers every reply of ``status`` and
``heal`` (one per host), and a handler that returns None stays silent (a
``release`` of another host's worker is that host's to answer).

A request that fails its contract gets an error reply with ``code``
``bad_request``; a handler that fails gets ``internal``. Either way the caller
hears why.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from foundry.contracts import ControlReply, ControlRequest, ControlVerb, MessageRejected
from foundry.names import Names
from foundry.rejections import REJECTIONS

log = logging.getLogger(__name__)
Handler = Callable[[ControlRequest], Awaitable[ControlReply | None]]


class ControlServer:
    def __init__(self, names: Names, host: str = "") -> None:
        self.names = names
        self.host = host
        self.handlers: dict[ControlVerb, Handler] = {ControlVerb.PING: self._ping}

    def route(self, verb: ControlVerb, handler: Handler) -> None:
        self.handlers[verb] = handler

    async def start(self, nc: NATS) -> None:
        for verb in self.handlers:
            await nc.subscribe(self.names.control(verb.value), cb=self._dispatch(nc, verb))

    def _dispatch(self, nc: NATS, verb: ControlVerb) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            try:
                reply = await self.handlers[verb](ControlRequest.from_payload(verb, msg.data))
            except MessageRejected as exc:
                REJECTIONS.rejected(exc)
                reply = ControlReply.failure("bad_request", f"bad request: {exc.detail}")
            except Exception as exc:
                log.exception("control %s failed", verb)
                reply = ControlReply.failure("internal", f"{type(exc).__name__}: {exc}")
            if msg.reply and reply is not None:
                await nc.publish(msg.reply, reply.to_payload())

        return handle

    async def _ping(self, _request: ControlRequest) -> ControlReply:
        return ControlReply({"ok": True, "pid": os.getpid(), "host_id": self.host})
