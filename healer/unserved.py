"""Tasks for a type no fleet serves: dead-lettered after a grace period, never kept in silence.

A type is served while its durable consumer ``workers-<type>`` exists (every
healer creates the consumers of its fleet's types). Tasks waiting on the
subject of a type without one are moved to AGENT_DEAD, with the reason "no
worker serves type X", once the type has been unserved for
``FOUNDRY_UNSERVED_GRACE`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from foundry.contracts import DeadLetterAction
from foundry.names import AGENT_TYPE_RE, Names
from healer.deadletter import DeadLetters

log = logging.getLogger(__name__)
MAX_PER_ROUND = 1000  # dead letters moved per type per round (the next round goes on)


class UnservedTypes:
    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        deadletters: DeadLetters,
        grace: float,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.js = js
        self.leading = leading  # a cluster-wide duty: only the leader checks
        self.names = names
        self.deadletters = deadletters
        self.grace = grace
        self.period = max(0.5, min(grace / 4, 5.0))
        self.first_seen: dict[str, float] = {}  # unserved type → when it was first seen

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            try:
                await self.check()
            except Exception:
                log.exception("unserved-type check failed")

    async def waiting(self) -> dict[str, int]:
        """Messages waiting per agent type on the task subjects."""
        info = await self.js.stream_info(
            self.names.tasks_stream, subjects_filter=self.names.tasks("*")
        )
        out: dict[str, int] = {}
        for subject, count in (info.state.subjects or {}).items():
            agent_type = subject.rsplit(".", 1)[-1]
            if count and AGENT_TYPE_RE.fullmatch(agent_type):
                out[agent_type] = count
        return out

    async def served(self, agent_type: str) -> bool:
        try:
            await self.js.consumer_info(self.names.tasks_stream, self.names.consumer(agent_type))
            return True
        except NotFoundError:
            return False

    async def check(self) -> int:
        """One round; returns how many tasks were dead-lettered (none unless leading: a
        healer that is elected starts each type's grace afresh)."""
        if not self.leading():
            self.first_seen.clear()
            return 0
        now = time.monotonic()
        unserved = {t for t in await self.waiting() if not await self.served(t)}
        for agent_type in list(self.first_seen):
            if agent_type not in unserved:
                del self.first_seen[agent_type]
        moved = 0
        for agent_type in sorted(unserved):
            since = self.first_seen.setdefault(agent_type, now)
            if now - since >= self.grace:
                moved += await self._dead_letter_all(agent_type)
        return moved

    async def _dead_letter_all(self, agent_type: str) -> int:
        subject, seq, moved = self.names.tasks(agent_type), 1, 0
        reason = (
            f"no worker serves type {agent_type!r} (no fleet lists it; waited "
            f"FOUNDRY_UNSERVED_GRACE={self.grace:g}s)"
        )
        while moved < MAX_PER_ROUND:
            try:
                raw = await self.js.get_msg(
                    self.names.tasks_stream, seq=seq, subject=subject, next=True
                )
            except NotFoundError:
                break
            if raw.seq is None:
                break
            await self.deadletters.dead_letter(
                agent_type, raw.seq, DeadLetterAction.UNSERVED, reason, []
            )
            seq, moved = raw.seq + 1, moved + 1
        if moved:
            log.warning("dead-lettered %d task(s) of unserved type %s", moved, agent_type)
        return moved
