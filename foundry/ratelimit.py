"""Cluster-wide rate limits and token budgets, kept in Redis and shared by every worker.

Each limit is a sliding window log under ``foundry:<ns>:limit:<name>``: a sorted
set of grants (member ``<ticket>|<cost>``, score the grant time in ms by the
Redis clock) and ``…:sum``, the cost still inside the window. A grant is taken
only when it fits every named limit at once (one Lua script, atomic), so no
window ever holds more than its count. ``…:pause`` blocks a name for a while
(a provider's ``Retry-After``), whether or not it has a rate of its own.

Names: ``type:<agent type>`` (tasks started), ``llm:<model>`` (requests),
``tokens:<model>`` (prompt plus completion tokens, reserved as an estimate and
settled with what the server reports).

``llm:<model>`` names are gated by what the provider says (:meth:`Limiter.answered`):
a request counts in the window from its grant until its answer; after a pause, and
whenever nothing is known, one probe goes alone and the rest wait for its answer;
the provider's ``x-ratelimit-remaining-requests`` becomes a credit of requests that
are sent until its reset, less those still on their way. The scripts and their
keys are in :mod:`foundry.limitscripts`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from foundry import limitscripts
from foundry.rates import MODEL_NAME_RE, Rate

log = logging.getLogger(__name__)

MAX_NAMES = 64  # label values a process reports (limit names, models)
WAIT_STEP_MAX = 5.0  # the longest single sleep before checking again
FLIGHT_HOLD = 30.0  # the longest a request to a provider counts as on its way
PROBE_POLL = 0.1  # how often requests waiting for a probe's answer look again
OPEN_FOR = 60.0  # how long a probe answered without rate-limit headers opens a model


@dataclass
class LimitStats:
    """What this process waited for and spent, reported in its heartbeats (names bounded)."""

    waits: dict[str, int] = field(default_factory=dict)
    wait_seconds: dict[str, float] = field(default_factory=dict)
    prompt_tokens: dict[str, int] = field(default_factory=dict)
    completion_tokens: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _add(self, table: dict[str, Any], name: str, amount: float) -> None:
        with self._lock:
            if name in table or len(table) < MAX_NAMES:
                table[name] = table.get(name, 0) + amount

    def waited(self, name: str, seconds: float) -> None:
        self._add(self.waits, name, 1)
        self._add(self.wait_seconds, name, seconds)

    def tokens(self, model: str, prompt: int, completion: int) -> None:
        self._add(self.prompt_tokens, model, max(0, prompt))
        self._add(self.completion_tokens, model, max(0, completion))

    def throttle(self, model: str) -> None:
        self._add(self.throttled, model, 1)

    def heartbeat_fields(self) -> dict[str, Any]:
        with self._lock:
            return {
                "limit_waits": dict(self.waits),
                "limit_wait_seconds": {k: round(v, 6) for k, v in self.wait_seconds.items()},
                "llm_prompt_tokens": dict(self.prompt_tokens),
                "llm_completion_tokens": dict(self.completion_tokens),
                "llm_throttled": dict(self.throttled),
            }


# One per process: the handlers count into it, the worker's heartbeat reads it.
LIMIT_STATS = LimitStats()


def type_limit(agent_type: str) -> str:
    return f"type:{agent_type}"


def model_limit(model: str) -> str:
    return f"llm:{model}"


def token_limit(model: str) -> str:
    return f"tokens:{model}"


def new_ticket() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ProviderAnswer:
    """What a provider's answer to one request says about its limits (status 0: none came)."""

    status: int
    remaining: int | None = None  # requests it takes before ``reset`` (after this one)
    reset: float | None = None  # seconds until its request limit is whole again
    retry_after: float | None = None  # seconds, with a 429


def is_gated(name: str) -> bool:
    """Requests to a provider: gated by its answers as well as by a rate of ours."""
    return name.startswith("llm:")


class Limiter:
    """The limits in ``rates`` (by name) over one Redis; names without a rate only pause."""

    def __init__(
        self,
        redis: aioredis.Redis,
        key_prefix: str,
        rates: Mapping[str, Rate],
        hold: float = FLIGHT_HOLD,
    ) -> None:
        self.redis = redis
        self.prefix = f"{key_prefix}:limit:"
        self.rates = dict(rates)
        self.hold_ms = max(1, int(hold * 1000))
        self._acquire = redis.register_script(limitscripts.ACQUIRE)
        self._answer = redis.register_script(limitscripts.ANSWER)
        self._settle = redis.register_script(limitscripts.SETTLE)
        self._pause = redis.register_script(limitscripts.PAUSE)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def acquire(self, costs: Mapping[str, int], ticket: str) -> float:
        """Take ``cost`` of every named limit at once; 0 when granted, else seconds to wait.

        A cost above a limit's count is taken as the whole count (it could never fit).
        A grant of a gated name must be followed by :meth:`answered` with its ticket.
        """
        keys: list[str] = []
        args: list[Any] = [len(costs), ticket, int(PROBE_POLL * 1000)]
        for name, cost in costs.items():
            k = self.key(name)
            keys += [k + s for s in ("", ":sum", ":pause", ":credit", ":open", ":flight", ":probe")]
            r = self.rates.get(name)
            gated = is_gated(name)
            args += [
                r.count if r else 0,
                int(r.period * 1000) if r else 0,
                max(0, int(cost)),
                self.hold_ms if gated else 0,
                int(gated),
            ]
        wait_ms = await self._acquire(keys=keys, args=args)
        return float(wait_ms) / 1000.0

    async def answered(self, name: str, ticket: str, answer: ProviderAnswer) -> None:
        """The request granted under ``ticket`` got ``answer`` (or none: status 0).

        Its place in the window now ends a period after this moment. A 429 pauses
        ``name`` for its ``Retry-After`` (1 s when it gives none) and makes the next
        request a probe; a probe answered 2xx opens the model, with a credit when the
        provider said how many requests it still takes.
        """
        k = self.key(name)
        keys = [k + s for s in ("", ":pause", ":credit", ":open", ":flight", ":probe")]
        remaining = -1 if answer.remaining is None else max(0, answer.remaining)
        args: list[str | int] = [
            ticket,
            1,
            answer.status,
            remaining,
            int((answer.reset or 0.0) * 1000),
            max(1, int((answer.retry_after or 1.0) * 1000)),
            int(OPEN_FOR * 1000),
        ]
        await self._answer(keys=keys, args=args)

    async def settle(self, name: str, ticket: str, reserved: int, actual: int) -> None:
        """Replace the cost reserved under ``ticket`` with the ``actual`` one."""
        r = self.rates.get(name)
        if r is None:
            return
        k = self.key(name)
        args: list[str | int] = [ticket, max(0, int(reserved)), max(0, int(actual)), r.count]
        await self._settle(keys=[k, k + ":sum"], args=args)

    async def pause(self, name: str, seconds: float) -> bool:
        """Block ``name`` for ``seconds`` (never shortening a pause); True when it was extended."""
        ms = max(1, int(seconds * 1000))
        return bool(await self._pause(keys=[self.key(name) + ":pause"], args=[ms]))

    async def wait_for(
        self,
        costs: Mapping[str, int],
        ticket: str,
        max_wait: float,
        hold: Callable[[], Awaitable[None]] | None = None,
    ) -> tuple[bool, float]:
        """Acquire, sleeping while over a limit, for at most ``max_wait`` seconds.

        Returns (granted, seconds waited). ``hold`` runs between sleeps (a progress note).
        Redis being unreachable grants at once: a limit must not stop the cluster.
        """
        started = time.monotonic()
        deadline = started + max_wait
        first_wait = True
        while True:
            try:
                wait = await self.acquire(costs, ticket)
            except RedisError as exc:
                log.warning("rate limits not checked (Redis: %s); going ahead", exc)
                return True, time.monotonic() - started
            waited = time.monotonic() - started
            if wait <= 0:
                if not first_wait:
                    for name in costs:
                        LIMIT_STATS.waited(name, waited)
                return True, waited
            first_wait = False
            left = deadline - time.monotonic()
            if left <= 0:
                for name in costs:
                    LIMIT_STATS.waited(name, waited)
                return False, waited
            if hold is not None:
                await hold()
            # a little jitter so the workers waiting on one limit do not all ask at once
            await asyncio.sleep(min(wait * random.uniform(1.0, 1.2), WAIT_STEP_MAX, left))


def valid_name(name: object) -> bool:
    """A limit name or model as it may appear in a heartbeat."""
    if not isinstance(name, str):
        return False
    kind, _, rest = name.partition(":")
    if kind in ("type", "llm", "tokens") and rest:
        return bool(MODEL_NAME_RE.fullmatch(rest))
    return bool(MODEL_NAME_RE.fullmatch(name))
