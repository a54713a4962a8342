"""Stopping a run on SIGINT / SIGTERM without leaving processes behind.

The measuring part of a run is its own task; a stop signal cancels it, and
cancels it again every second until it ends, because a single cancellation
can be swallowed (nats-py turns one into ``TooManyStalledMsgsError``, and
``asyncio.wait_for`` on Python 3.11 drops one that races with completion).
Cleanup runs outside that task, in the caller, so it is never cancelled
halfway: every server and child is stopped by pid whatever happened.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
RECANCEL_SECONDS = 1.0


class Interrupted(Exception):
    """The run was stopped by a signal."""


class Guard:
    """Runs one body at a time; :meth:`interrupt` cancels it until it ends."""

    def __init__(self) -> None:
        self.requested = False
        self.body: asyncio.Task[Any] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.interrupt)

    def interrupt(self) -> None:
        self.requested = True
        self._cancel()

    def _cancel(self) -> None:
        if self.body is not None and not self.body.done():
            self.body.cancel()
            asyncio.get_running_loop().call_later(RECANCEL_SECONDS, self._cancel)

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` as the cancellable body; raises :class:`Interrupted` if stopped."""
        if self.requested:
            coro.close()
            raise Interrupted("stopped by a signal")
        self.body = asyncio.create_task(coro)
        try:
            return await asyncio.shield(self.body)
        except (Exception, asyncio.CancelledError) as exc:
            if self.requested:  # whatever the cancellation turned into on its way out
                raise Interrupted("stopped by a signal") from exc
            raise
        finally:
            if not self.body.done():  # our own caller was cancelled: stop the body too
                self.body.cancel()
                await asyncio.wait({self.body}, timeout=5)
            self.body = None
