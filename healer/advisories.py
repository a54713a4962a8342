"""Max-deliveries advisories: confirmed, acted on by the leading healer, kept through a takeover.

nats-server publishes ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``
as a core message (no stream keeps it) when a task has been delivered ``max_deliver``
times; it reaches every healer. The leader dead-letters the task once the server and
the task store bear the advisory out (the advisory alone is only a claim).

A healer that does not lead keeps each valid advisory in a bounded buffer (at most
:data:`KEEP_MAX`, none older than ``keep_seconds``, 2 x ``FOUNDRY_LEASE_TTL``), and acts
on what it kept when it takes the lease. An advisory that arrives after the leader
died but before the next one holds the key is therefore acted on, not lost. One the
old leader already handled is not handled twice: its message is gone from the task
stream (skipped quietly), or, when the old leader died half-way, the dead-letter
publish is deduplicated by ``Nats-Msg-Id`` and the task's stored status says ``dead``
(:meth:`healer.deadletter.DeadLetters.dead_letter`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from foundry import codec
from foundry.contracts import DeadLetterAction, MaxDeliveriesAdvisory, task_id_from
from foundry.errors import CacheUnavailable
from foundry.names import Names
from foundry.rejections import REJECTIONS
from foundry.store import TaskStore

log = logging.getLogger(__name__)
KEEP_MAX = 1000


class Advisories:
    """The advisory subscription, the takeover buffer, and the confirmation before acting."""

    def __init__(
        self,
        nc: NATS,
        store: TaskStore,
        names: Names,
        max_deliver: int,
        dead_letter: Callable[..., Awaitable[str | None]],
        leading: Callable[[], bool],
        keep_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc = nc
        self.store = store
        self.names = names
        self.max_deliver = max_deliver
        self.dead_letter = dead_letter
        self.leading = leading
        self.keep_seconds = keep_seconds
        self.clock = clock
        self.kept: deque[tuple[float, MaxDeliveriesAdvisory]] = deque(maxlen=KEEP_MAX)

    async def start(self) -> None:
        await self.nc.subscribe(self.names.max_deliveries_advisory(), cb=self._on_msg)

    async def _on_msg(self, msg: Msg) -> None:
        advisory = REJECTIONS.parse(lambda: MaxDeliveriesAdvisory.from_payload(msg.data))
        if advisory is None:
            return
        if (
            advisory.stream != self.names.tasks_stream
            or Names.type_of_consumer(advisory.consumer) is None
        ):
            REJECTIONS.record("advisory", "subject", f"not one of ours: {advisory}")
            return
        if self.leading():
            await self.act(advisory)
        else:
            self.keep(advisory)

    def keep(self, advisory: MaxDeliveriesAdvisory) -> None:
        """Hold an advisory for the next election (the oldest goes when the buffer is full)."""
        self.kept.append((self.clock(), advisory))
        self._prune()

    def _prune(self) -> None:
        cutoff = self.clock() - self.keep_seconds
        while self.kept and self.kept[0][0] < cutoff:
            self.kept.popleft()

    async def on_elected(self) -> int:
        """Act on the advisories kept while another healer led; returns how many were."""
        self._prune()
        batch = [advisory for _, advisory in self.kept]
        self.kept.clear()
        acted = 0
        for advisory in batch:
            if await self.act(advisory, kept=True):
                acted += 1
        if batch:
            log.info("took the lease: %d kept advisory(ies), %d dead-lettered", len(batch), acted)
        return acted

    async def act(self, advisory: MaxDeliveriesAdvisory, kept: bool = False) -> bool:
        """Dead-letter the advisory's task once confirmed; True when it was."""
        agent_type = Names.type_of_consumer(advisory.consumer) or ""
        attempts = await self._confirmed_attempts(advisory.stream_seq)
        if attempts is None and kept:
            # the message is gone: acked, or already dead-lettered by the healer that led then
            log.debug("kept advisory for seq %d: message gone, nothing to do", advisory.stream_seq)
            return False
        if attempts is None or attempts < self.max_deliver:
            REJECTIONS.record(
                "advisory",
                "unconfirmed",
                f"seq {advisory.stream_seq} claims {advisory.deliveries} deliveries; the server "
                f"and the task store show {attempts}",
            )
            return False
        task_id = await self.dead_letter(
            agent_type,
            advisory.stream_seq,
            DeadLetterAction.MAX_DELIVER,
            f"delivered {attempts} times without an ack (FOUNDRY_MAX_DELIVER={self.max_deliver})",
            [{"deliveries": attempts}],
        )
        return task_id is not None

    async def _confirmed_attempts(self, seq: int) -> int | None:
        """The recorded attempts of the task stored at ``seq``, or None when it is not there."""
        try:
            raw = await self.nc.jetstream().get_msg(self.names.tasks_stream, seq)
        except NotFoundError:
            return None
        except Exception as exc:
            log.warning("cannot confirm max-deliveries for seq %d: %r", seq, exc)
            return None
        try:
            record = await self.store.get(task_id_of(raw.headers, raw.data or b"", seq))
        except CacheUnavailable:
            return None
        return record.attempts if record is not None else None


def task_id_of(headers: dict[str, str] | None, payload: bytes, seq: int) -> str:
    """The id of the task stored at ``seq`` (headers first, then the JSON body's task_id)."""
    body_id: Any = None
    with contextlib.suppress(ValueError, AttributeError):
        body_id = codec.loads(payload).get("task_id")
    return task_id_from(headers, body_id, seq)
