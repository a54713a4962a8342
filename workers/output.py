"""A task's streamed output: what ``ctx.emit()`` does with the text a handler emits.

Each piece of at most ``MAX_CHUNK_CHARS`` characters becomes a :class:`TaskOutput`
published at once on ``agents.output.<type>.<task_id>`` (core NATS: a watcher
sees it within milliseconds) and kept in the task store's output list, written
in the background in batches so a chatty handler costs one Redis round trip per
batch, not per token. :meth:`OutputEmitter.close` waits for the last batch, so
the output is stored before the task's final status is. Past
``FOUNDRY_OUTPUT_MAX_BYTES`` in one attempt further output is dropped (and
counted in ``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.client import Client as NATS

from foundry.contracts import MAX_CHUNK_CHARS, OutputStream, TaskOutput
from foundry.errors import CacheUnavailable
from foundry.store import TaskStore

log = logging.getLogger(__name__)
CLOSE_WAIT = 5.0  # seconds the last batch may take before the result is stored anyway


def pieces(text: str, size: int = MAX_CHUNK_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


class OutputEmitter:
    """Streams one attempt's output; cheap until the handler first emits."""

    def __init__(
        self,
        nc: NATS,
        store: TaskStore,
        subject: str,
        task_id: str,
        agent_type: str,
        attempt: int,
        max_bytes: int,
    ) -> None:
        self.nc, self.store, self.subject = nc, store, subject
        self.task_id, self.agent_type, self.attempt = task_id, agent_type, attempt
        self.max_bytes = max_bytes
        self.seq = 0
        self.sent_bytes = 0
        self.dropped = 0
        self._pending: list[bytes] = []
        self._writer: asyncio.Task[None] | None = None

    async def emit(
        self, chunk: str | bytes, stream: OutputStream | str = OutputStream.TEXT
    ) -> None:
        """Publish ``chunk`` (bytes are decoded as UTF-8) as the next piece(s) of output."""
        try:
            kind = OutputStream(stream)
        except ValueError:
            allowed = ", ".join(s.value for s in OutputStream)
            raise ValueError(f"emit: stream {stream!r} is not one of {allowed}") from None
        text = chunk.decode("utf-8", "replace") if isinstance(chunk, bytes) else chunk
        if not isinstance(text, str):
            raise TypeError(f"emit: chunk must be str or bytes, not {type(chunk).__name__}")
        for piece in pieces(text):
            size = len(piece.encode("utf-8", "replace"))
            if self.sent_bytes + size > self.max_bytes:
                self.dropped += 1
                continue
            self.sent_bytes += size
            out = TaskOutput(self.task_id, self.agent_type, self.attempt, self.seq, kind, piece)
            self.seq += 1
            payload = out.to_payload()
            with contextlib.suppress(Exception):  # NATS down: the stored copy still counts
                await self.nc.publish(self.subject, payload)
            self._pending.append(payload)
        if self._pending and (self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self.store.append_output(self.task_id, batch)
            except CacheUnavailable as exc:
                log.debug("output of %s not stored: %s", self.task_id, exc)

    async def close(self) -> None:
        """Wait (bounded) until everything emitted is stored."""
        if self._writer is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._writer), CLOSE_WAIT)
            if self._pending:
                await asyncio.wait_for(self._write(), CLOSE_WAIT)
        if self.dropped:
            log.info(
                "task %s attempt %d: %d output piece(s) over FOUNDRY_OUTPUT_MAX_BYTES dropped",
                self.task_id, self.attempt, self.dropped,
            )  # fmt: skip
