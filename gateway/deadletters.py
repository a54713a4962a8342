"""Dead letters read from AGENT_DEAD: filters, a bounded scan, and the listing route.

The stream is read as the heal history reads AGENT_EVENTS
(:class:`gateway.streamscan.StreamScan`): oldest first, at most ``DEAD_SCAN``
letters and ``within`` seconds. The agent type and ``since`` filters
are applied by the server (the consumer's subject filter and start time); the
reason and ``until`` here. A record that fails the ``DeadLetter`` contract is
skipped and counted as a rejection.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from nats.aio.msg import Msg

from foundry.contracts import DeadLetter
from foundry.errors import BrokerUnavailable
from foundry.names import AGENT_TYPE_HINT, AGENT_TYPE_RE
from foundry.rejections import REJECTIONS
from foundry.replays import ReplayLedger
from gateway.errors import bad_request
from gateway.jsonio import json_response
from gateway.keys import JS, NC, REDIS, SETTINGS
from gateway.spec import Param
from gateway.streamscan import StreamScan

DEAD_SCAN = 20_000
LIST_MAX = 1000
REASON_MAX = 200
PREVIEW_CHARS = 1024
FETCH_BATCH = 100
TIME_MAX = 1e11  # a Unix time in seconds (year 5138): anything larger is a mistake

LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": LIST_MAX, "default": 50},
    "Dead letters to return",
)
OFFSET = Param(
    "offset",
    "query",
    {"type": "integer", "minimum": 0, "maximum": DEAD_SCAN, "default": 0},
    "Newest matching dead letters to skip",
)
AGENT_TYPE = Param(
    "agent_type",
    "query",
    {"type": "string", "pattern": AGENT_TYPE_RE.pattern},
    "Only dead letters of this agent type",
)
REASON = Param(
    "reason",
    "query",
    {"type": "string", "minLength": 1, "maxLength": REASON_MAX},
    "Only dead letters whose reason contains this text (case-insensitive)",
)
SINCE = Param(
    "since",
    "query",
    {"type": "number", "minimum": 0, "maximum": TIME_MAX},
    "Only dead letters stored at or after this Unix time (seconds)",
)
UNTIL = Param(
    "until",
    "query",
    {"type": "number", "minimum": 0, "maximum": TIME_MAX},
    "Only dead letters stored at or before this Unix time (seconds; before since: none)",
)
FILTER_PARAMS = (AGENT_TYPE, REASON, SINCE, UNTIL)


@dataclass(frozen=True)
class Filters:
    """Which dead letters a listing or a bulk replay is about (None: any)."""

    agent_type: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    @classmethod
    def from_request(cls, request: web.Request) -> Filters:
        query = request.query
        agent_type = query.get(AGENT_TYPE.name)
        if agent_type is not None and not AGENT_TYPE_RE.fullmatch(agent_type):
            raise bad_request(f"agent_type: {AGENT_TYPE_HINT}", AGENT_TYPE.name)
        reason = query.get(REASON.name)
        if reason is not None and not 1 <= len(reason) <= REASON_MAX:
            raise bad_request(f"reason must be 1-{REASON_MAX} characters", REASON.name)
        since = SINCE.number(request) if SINCE.name in query else None
        until = UNTIL.number(request) if UNTIL.name in query else None
        return cls(agent_type, reason, since, until)

    def matches(self, found: Found) -> bool:
        letter = found.letter
        if self.agent_type is not None and letter.agent_type != self.agent_type:
            return False
        if self.since is not None and found.at < self.since:
            return False
        if self.until is not None and found.at > self.until:
            return False
        return self.reason is None or self.reason.casefold() in letter.reason.casefold()

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Found:
    """One dead letter as stored: its AGENT_DEAD sequence and time, and the record."""

    seq: int
    at: float
    letter: DeadLetter

    def summary(self, replayed_as: str | None) -> dict[str, Any]:
        letter = self.letter
        return {
            "task_id": letter.task_id,
            "agent_type": letter.agent_type,
            "dead_seq": self.seq,
            "dead_at": self.at,
            "action": letter.action,
            "reason": letter.reason,
            "task_seq": letter.stream_seq,
            "evidence": letter.evidence,
            "payload": letter.payload[:PREVIEW_CHARS],
            "payload_chars": len(letter.payload),
            "replayed_as": replayed_as,
        }


class DeadScan:
    """One bounded read of AGENT_DEAD; ``scanned`` and ``truncated`` tell how far it got."""

    def __init__(self, request: web.Request, filters: Filters, within: float) -> None:
        self.request = request
        self.filters = filters
        self.within = within
        self.scanned = 0
        self.truncated = False

    async def batches(self) -> AsyncGenerator[list[Found], None]:
        """Letters in stream order, a fetch at a time, those the filters match."""
        app = self.request.app
        names = app[SETTINGS].names
        if not app[NC].is_connected:
            raise BrokerUnavailable("NATS is unreachable")
        scan = StreamScan(
            app[JS],
            names.dead_stream,
            names.dead(self.filters.agent_type or "*"),
            limit=DEAD_SCAN,
            within=self.within,
            start_time=self.filters.since,
            batch=FETCH_BATCH,
            fetch_timeout=1.0,
        )
        async with scan:
            try:
                async for msgs in scan:
                    self.scanned = scan.scanned
                    found = [f for f in map(_found, msgs) if f is not None]
                    yield [f for f in found if self.filters.matches(f)]
                    if self._past_until(found):
                        break
            finally:
                self.scanned, self.truncated = scan.scanned, scan.truncated

    def _past_until(self, found: list[Found]) -> bool:
        until = self.filters.until
        return until is not None and bool(found) and found[-1].at > until


def _found(msg: Msg) -> Found | None:
    letter = REJECTIONS.parse(lambda: DeadLetter.from_payload(msg.data), msg.subject)
    if letter is None:
        return None
    return Found(msg.metadata.sequence.stream, msg.metadata.timestamp.timestamp(), letter)


def ledger(request: web.Request) -> ReplayLedger:
    settings = request.app[SETTINGS]
    return ReplayLedger(request.app[REDIS], settings.names, settings.result_ttl)


async def list_dead(request: web.Request) -> web.Response:
    """GET /api/cluster/dead — dead letters, newest first, with the task each was replayed as."""
    limit, offset = LIMIT.integer(request), OFFSET.integer(request)
    filters = Filters.from_request(request)
    keep: deque[Found] = deque(maxlen=limit + offset)
    total = 0
    scan = DeadScan(request, filters, within=5.0)
    async with contextlib.aclosing(scan.batches()) as batches:
        async for batch in batches:
            total += len(batch)
            keep.extend(batch)
    page = list(reversed(keep))[offset : offset + limit]
    replayed = await ledger(request).replayed_as((f.letter.task_id, f.seq) for f in page)
    letters = [f.summary(r) for f, r in zip(page, replayed, strict=True)]
    return json_response(
        {
            "dead_letters": letters,
            "count": len(letters),
            "offset": offset,
            "total": total,
            "scanned": scan.scanned,
            "truncated": scan.truncated,
            "filters": filters.to_json(),
        }
    )
