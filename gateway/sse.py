"""Server-Sent Events responses with a bounded buffer per client.

Producers hand frames to :meth:`SseClient.offer`, which never waits: a client
whose buffer (``FOUNDRY_SSE_BUFFER`` frames) is full is cut off — its
connection is aborted — so one slow reader never slows the gateway or the
other readers. It reconnects with ``Last-Event-ID`` and is given what it
missed. The handler's :meth:`SseClient.pump` writes frames as they come and a
keep-alive comment after ``FOUNDRY_SSE_KEEPALIVE`` seconds of silence, and
returns after ``FOUNDRY_GATEWAY_MAX_WAIT`` seconds at most (clients reconnect),
when the client goes away, or when ``done`` is set.

A client gets the stream when it asks for it (``Accept: text/event-stream``,
as ``EventSource`` and the status page do); any other caller gets the same
data once, as JSON, so a plain ``curl`` or a fuzzer never hangs on a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

from foundry import codec
from gateway.keys import SETTINGS

KEEPALIVE = b": keep-alive\n\n"
BATCH = 256  # frames joined into one write
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-store",
    "X-Accel-Buffering": "no",  # proxies: do not buffer the stream
}


def wants_stream(request: web.Request) -> bool:
    return "text/event-stream" in request.headers.get("Accept", "")


def frame(event: str, data: object, event_id: str | None = None) -> bytes:
    """One SSE frame; ``data`` is sent as one line of JSON."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: ".encode() + codec.dumps(data) + b"\n\n"


class SseClient:
    """One streaming response: a bounded queue of frames and the loop that writes them."""

    def __init__(self, request: web.Request) -> None:
        settings = request.app[SETTINGS]
        self.request = request
        self.keepalive = settings.sse_keepalive
        self.lifetime = settings.gateway_max_wait
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=settings.sse_buffer)
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        self.cut = False
        self.done = asyncio.Event()

    async def open(self) -> None:
        await self.response.prepare(self.request)

    def offer(self, data: bytes) -> bool:
        """Queue a frame without waiting; a full buffer cuts the client off."""
        if self.cut:
            return False
        try:
            self.queue.put_nowait(data)
            return True
        except asyncio.QueueFull:
            self.cut_off()
            return False

    def cut_off(self) -> None:
        self.cut = True
        self.done.set()
        transport = self.request.transport
        if transport is not None:
            transport.abort()  # drop what is buffered too: the client reconnects

    async def write(self, data: bytes) -> bool:
        """Write now (False once the client is gone)."""
        if self.cut:
            return False
        try:
            await self.response.write(data)
            return True
        except (ConnectionError, RuntimeError):
            self.cut = True
            return False

    async def pump(self, idle: Callable[[], object] | None = None) -> None:
        """Write queued frames until ``done``, the lifetime, or a lost client.

        ``idle`` is called at every keep-alive (a poll for what events may not carry).
        """
        deadline = time.monotonic() + self.lifetime
        waiter: asyncio.Task[bool] = asyncio.ensure_future(self.done.wait())
        try:
            while not self.cut:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                getter = asyncio.ensure_future(self.queue.get())
                finished, _ = await asyncio.wait(
                    {getter, waiter},
                    timeout=min(self.keepalive, left),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if getter in finished:
                    if not await self.write(self._batch(getter.result())):
                        break
                    continue
                getter.cancel()
                if waiter in finished:
                    await self.flush()
                    break
                if idle is not None:
                    result = idle()
                    if asyncio.iscoroutine(result):
                        await result
                if not await self.write(KEEPALIVE):
                    break
        finally:
            waiter.cancel()

    def _batch(self, first: bytes) -> bytes:
        """``first`` and whatever else is queued, for one write."""
        if self.queue.empty():
            return first
        parts = [first]
        while not self.queue.empty() and len(parts) < BATCH:
            parts.append(self.queue.get_nowait())
        return b"".join(parts)

    async def flush(self) -> None:
        """Write whatever is still queued."""
        while not self.queue.empty() and not self.cut:
            if not await self.write(self.queue.get_nowait()):
                return

    async def close(self) -> web.StreamResponse:
        if not self.cut:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.response.write_eof()
        return self.response
