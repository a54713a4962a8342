"""One bounded, oldest-first read of a JetStream stream for a request.

The dead-letter listing, the heal history and the event stream's catch-up all
read a stream the same way: a short-lived ephemeral consumer (no acks, kept in
memory, forgotten by the server after 30 s should the gateway die), fetched a
batch at a time until nothing is pending, at most ``limit`` messages and
``within`` seconds, deleted afterwards::

    async with StreamScan(js, stream, subject, limit=1000, within=5.0) as scan:
        async for msgs in scan:
            ...
    scan.scanned, scan.truncated
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_ERRORS = (TimeoutError, nats.errors.TimeoutError)


class StreamScan:
    """Messages of ``stream`` on ``subject`` from its start, a sequence or a time.

    ``scanned`` counts the messages fetched; ``truncated`` is set when the scan
    stopped at ``limit`` or ``within`` with messages still pending.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        *,
        limit: int,
        within: float,
        start_seq: int | None = None,
        start_time: float | None = None,
        batch: int = 100,
        fetch_timeout: float = 0.5,
    ) -> None:
        self.js, self.stream, self.subject = js, stream, subject
        self.limit, self.within, self.batch = limit, within, batch
        self.fetch_timeout = fetch_timeout
        self.config = ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        if start_seq is not None:
            self.config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            self.config.opt_start_seq = max(1, start_seq)
        elif start_time is not None:
            self.config.deliver_policy = DeliverPolicy.BY_START_TIME
            self.config.opt_start_time = datetime.fromtimestamp(start_time, UTC)
        self.scanned = 0
        self.truncated = False
        self._psub: JetStreamContext.PullSubscription | None = None
        self._consumer: str | None = None
        self._pending = 0

    async def __aenter__(self) -> StreamScan:
        self._psub = await self.js.pull_subscribe(
            self.subject, stream=self.stream, config=self.config
        )
        try:
            info = await self._psub.consumer_info()
        except BaseException:
            await self.__aexit__()
            raise
        self._consumer, self._pending = info.name, info.num_pending or 0
        return self

    async def __aexit__(self, *exc: object) -> None:
        psub, self._psub = self._psub, None
        if psub is None:
            return
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(self.stream, self._consumer)

    async def __aiter__(self) -> AsyncIterator[list[Msg]]:
        assert self._psub is not None, "use StreamScan in an async with block"
        started = time.monotonic()
        while self._pending > 0:
            if self.scanned >= self.limit or time.monotonic() - started > self.within:
                self.truncated = True
                return
            want = min(self.batch, self.limit - self.scanned)
            try:
                msgs = await self._psub.fetch(want, timeout=self.fetch_timeout)
            except FETCH_ERRORS:
                return
            if not msgs:
                return
            self.scanned += len(msgs)
            self._pending = msgs[-1].metadata.num_pending
            yield msgs
