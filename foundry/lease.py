"""A leader lease in a JetStream KV bucket: one holder cluster-wide, replaced within its TTL.

The lease is one key of the lease bucket (``names.lease_bucket``, provisioned with
per-message TTLs). Its holder writes it with ``Nats-TTL: <ttl>s`` and renews it
every third of the TTL with a revision-checked update
(``Nats-Expected-Last-Subject-Sequence``), so two holders can never both succeed.
A holder that stops renewing (killed, partitioned, wedged) loses the key when the
server expires the message; a standby that polls sees the key gone and takes it
with an expected revision of 0. Expiry is the server's clock alone: no host
compares its clock with another's.

The holder counts its lease valid until ``ttl`` after it *sent* the last
successful write (the server's TTL starts later than that), so a holder that
cannot renew stops acting before any standby can take over. A holder that stops
cleanly writes a released value, which a standby takes at its next poll.

A standby remembers the last holder it read and when it first saw that holder's
latest revision (on its own clock); on taking the key it keeps them in
:attr:`Lease.takeover`, so an election can say whom it replaced and how long
after that holder's last renewal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from foundry import codec

log = logging.getLogger(__name__)

# Server error codes for "the subject's last sequence is not the one you expected".
WRONG_LAST_SEQUENCE = (10071, 10164)
OP_TIMEOUT = 2.0


def holder_id() -> str:
    """A name for this process as a lease holder: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Takeover:
    """How this process came to hold the lease: the holder it last saw before (None when it
    saw none) and the seconds from first seeing that holder's last write to taking the key."""

    previous: str | None
    since_previous_write: float | None


def election_details(lease: Lease) -> dict[str, object]:
    """The figures of a ``heal.leader`` event for a lease just taken: which duty (the key),
    the new holder, the previous one when known, and how long after its last write."""
    takeover = lease.takeover or Takeover(None, None)
    return {
        "duty": lease.key,
        "holder": lease.holder,
        "previous_holder": takeover.previous,
        "since_previous_write_seconds": takeover.since_previous_write,
    }


@dataclass(frozen=True)
class LeaseView:
    """What the lease key holds now: its holder (None when released) and revision."""

    holder: str | None
    revision: int


class Lease:
    """One lease key. :meth:`acquire` and :meth:`renew` are single attempts; :meth:`run`
    keeps a process standing by or leading until ``stop`` is set."""

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        key: str,
        ttl: int,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 1:
            raise ValueError("a lease lives at least one second (nats-server's TTL unit)")
        self.js = js
        self.bucket = bucket
        self.key = key
        self.ttl = ttl
        self.holder = holder or holder_id()
        self.clock = clock
        self.subject = f"$KV.{bucket}.{key}"
        self.stream = f"KV_{bucket}"
        self._revision = 0
        self._valid_until = 0.0
        # the last other holder read: (holder, revision, when that revision was first read)
        self._seen: tuple[str, int, float] | None = None
        self.takeover: Takeover | None = None

    @property
    def held(self) -> bool:
        """Whether this process may act as the holder now."""
        return self._revision > 0 and self.clock() < self._valid_until

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def poll_every(self) -> float:
        return min(1.0, max(0.1, self.ttl / 10))

    async def read(self) -> LeaseView | None:
        """The key's current value, or None when it is absent (expired or never taken)."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self.subject, direct=True)
        except NotFoundError:
            return None
        try:
            body = codec.loads(msg.data) if msg.data else {}
        except codec.JSONDecodeError:
            body = {}
        holder = body.get("holder") if isinstance(body, dict) else None
        return LeaseView(holder if isinstance(holder, str) else None, int(msg.seq or 0))

    async def _write(self, holder: str | None, last: int) -> int | None:
        """Write the key if its last revision is ``last``; the new revision, or None."""
        body = codec.dumps({"holder": holder, "ttl": self.ttl, "at": time.time()})
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last), "Nats-TTL": f"{self.ttl}s"}
        try:
            ack = await self.js.publish(self.subject, body, headers=headers, timeout=OP_TIMEOUT)
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it (absent or released); True when held now."""
        if self.held:
            return True
        sent = self.clock()
        view = await self.read()
        if view is not None and view.holder not in (None, self.holder):
            self._saw(view.holder, view.revision, sent)
            return False
        revision = await self._write(self.holder, view.revision if view else 0)
        if revision is None:
            return False
        self._revision, self._valid_until = revision, sent + self.ttl
        seen, self._seen = self._seen, None
        self.takeover = Takeover(
            seen[0] if seen else None, round(self.clock() - seen[2], 3) if seen else None
        )
        log.info("lease %s taken by %s (revision %d)", self.key, self.holder, revision)
        return True

    def _saw(self, holder: str, revision: int, now: float) -> None:
        if self._seen is None or self._seen[:2] != (holder, revision):
            self._seen = (holder, revision, now)

    async def renew(self) -> bool:
        """Extend the lease; False (and no longer held) when another holder has it."""
        if self._revision == 0:
            return False
        sent = self.clock()
        revision = await self._write(self.holder, self._revision)
        if revision is None:
            log.warning("lease %s lost: another holder wrote it", self.key)
            self._revision, self._valid_until = 0, 0.0
            return False
        self._revision, self._valid_until = revision, sent + self.ttl
        return True

    async def release(self) -> None:
        """Give the lease up at once (best effort: an unanswered write just expires)."""
        if self._revision == 0:
            return
        revision, self._revision, self._valid_until = self._revision, 0, 0.0
        try:
            await self._write(None, revision)
            log.info("lease %s released by %s", self.key, self.holder)
        except Exception as exc:
            log.info("lease %s not released (%r); it expires within %ds", self.key, exc, self.ttl)

    async def run(
        self,
        stop: asyncio.Event,
        on_elected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], Awaitable[None]],
    ) -> None:
        """Stand by or lead until ``stop``: ``on_elected`` when the lease is taken,
        ``on_lost`` when it could not be kept, or at stop while held; then release it."""
        leading = False
        try:
            while not stop.is_set():
                try:
                    if leading:
                        # A write lost to another holder ends the lease at once; one that
                        # fails for a lost connection is retried until the deadline passes.
                        await self.renew()
                    elif await self.acquire():
                        leading = True
                        await on_elected()
                except (TimeoutError, nats.errors.Error, APIError) as exc:
                    log.debug("lease %s: %r", self.key, exc)
                if leading and not self.held:
                    leading, self._revision = False, 0
                    await on_lost()
                wait = self.poll_every
                if leading:
                    wait = min(self.renew_every, max(0.05, self._valid_until - self.clock()))
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            if leading:
                await on_lost()
            await self.release()
