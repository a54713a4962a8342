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

from foundry.rates import MODEL_NAME_RE, Rate

log = logging.getLogger(__name__)

MAX_NAMES = 64  # label values a process reports (limit names, models)
WAIT_STEP_MAX = 5.0  # the longest single sleep before checking again

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local ticket = ARGV[2]
local wait = 0
local costs = {}
local function cost_of(member)
  return tonumber(string.match(member, '|(%d+)$')) or 0
end
for i = 1, n do
  local z, s, p = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local pttl = redis.call('PTTL', p)
  if pttl > wait then wait = pttl end
  local limit = tonumber(ARGV[3 * i])
  local period = tonumber(ARGV[3 * i + 1])
  local cost = math.min(tonumber(ARGV[3 * i + 2]), limit)
  costs[i] = cost
  if limit > 0 then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - period)
    local sum = tonumber(redis.call('GET', s) or '0')
    for _, m in ipairs(old) do sum = sum - cost_of(m) end
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - period)
      if sum < 0 or redis.call('ZCARD', z) == 0 then sum = 0 end
      redis.call('SET', s, sum, 'PX', period)
    end
    if sum + cost > limit then
      local need = sum + cost - limit
      local freed = 0
      local until_free = period
      local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + cost_of(entries[j])
        if freed >= need then
          until_free = tonumber(entries[j + 1]) + period - now
          break
        end
      end
      if until_free < 1 then until_free = 1 end
      if until_free > wait then wait = until_free end
    end
  end
end
if wait > 0 then return wait end
for i = 1, n do
  local limit = tonumber(ARGV[3 * i])
  if limit > 0 then
    local z, s = KEYS[3 * i - 2], KEYS[3 * i - 1]
    local period = tonumber(ARGV[3 * i + 1])
    redis.call('ZADD', z, now, ticket .. '|' .. costs[i])
    redis.call('INCRBY', s, costs[i])
    redis.call('PEXPIRE', z, period)
    redis.call('PEXPIRE', s, period)
  end
end
return 0
"""

_SETTLE = """
local old = ARGV[1] .. '|' .. ARGV[2]
local score = redis.call('ZSCORE', KEYS[1], old)
if not score then return 0 end
local actual = math.min(tonumber(ARGV[3]), tonumber(ARGV[4]))
redis.call('ZREM', KEYS[1], old)
redis.call('ZADD', KEYS[1], score, ARGV[1] .. '|' .. actual)
local sum = redis.call('INCRBY', KEYS[2], actual - tonumber(ARGV[2]))
if sum < 0 then redis.call('SET', KEYS[2], 0, 'KEEPTTL') end
return 1
"""

_PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) >= ms then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return 1
"""


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


class Limiter:
    """The limits in ``rates`` (by name) over one Redis; names without a rate only pause."""

    def __init__(self, redis: aioredis.Redis, key_prefix: str, rates: Mapping[str, Rate]) -> None:
        self.redis = redis
        self.prefix = f"{key_prefix}:limit:"
        self.rates = dict(rates)
        self._acquire = redis.register_script(_ACQUIRE)
        self._settle = redis.register_script(_SETTLE)
        self._pause = redis.register_script(_PAUSE)

    def key(self, name: str) -> str:
        return self.prefix + name

    async def acquire(self, costs: Mapping[str, int], ticket: str) -> float:
        """Take ``cost`` of every named limit at once; 0 when granted, else seconds to wait.

        A cost above a limit's count is taken as the whole count (it could never fit).
        """
        keys: list[str] = []
        args: list[Any] = [len(costs), ticket]
        for name, cost in costs.items():
            k = self.key(name)
            keys += [k, k + ":sum", k + ":pause"]
            r = self.rates.get(name)
            args += [r.count if r else 0, int(r.period * 1000) if r else 0, max(0, int(cost))]
        wait_ms = await self._acquire(keys=keys, args=args)
        return float(wait_ms) / 1000.0

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
