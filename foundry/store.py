"""Task status and results in Redis.

``foundry:task:<id>`` is a hash (status, agent_type, attempts, timings,
worker, error); ``foundry:result:<id>`` holds the result as JSON;
``foundry:output:<id>`` is a capped list of the task's streamed output chunks
(``TaskOutput`` payloads, every attempt's). All expire after ``FOUNDRY_RESULT_TTL``.

Writes are fenced by the JetStream delivery number: a worker may only claim or
finish a task while no later delivery has claimed it, and never once a final
status is stored. So a late result from a worker that was declared dead (say,
SIGSTOPped and continued) never overrides the result of the redelivery.

With ``min_replicas`` > 0 (``FOUNDRY_REDIS_MIN_REPLICAS``) a finish counts only once
``WAIT`` confirms that many replicas have it; otherwise it is a
:class:`CacheUnavailable`, so the worker holds its lease and retries as when Redis is
down. With 0 the finish is batched with the other calls of its event-loop tick.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from foundry import codec
from foundry.contracts import FINAL_STATUSES, TaskStatus
from foundry.errors import CacheUnavailable
from foundry.names import Names
from foundry.scripts import ScriptBatcher

DEAD, QUEUED = TaskStatus.DEAD, TaskStatus.QUEUED

_FINAL_CHECK = """
local st = redis.call('HGET', KEYS[1], 'status')
if st == 'completed' or st == 'failed' or st == 'dead' or st == 'cancelled' then return st end
local d = tonumber(redis.call('HGET', KEYS[1], 'delivery') or '0')
if tonumber(ARGV[1]) < d then return 'stale' end
"""

# KEYS: task key. ARGV: delivery, worker_id, now, agent_type, ttl, submitted_at
_CLAIM = (
    _FINAL_CHECK
    + """
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[3],
             'error', 'cancelled by request')
  return 'cancelled'
end
redis.call('HSET', KEYS[1], 'status', 'running', 'delivery', ARGV[1], 'attempts', ARGV[1],
           'worker_id', ARGV[2], 'started_at', ARGV[3], 'agent_type', ARGV[4])
redis.call('HSETNX', KEYS[1], 'submitted_at', ARGV[6])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return 'ok'
"""
)

# KEYS: task key, result key. ARGV: delivery, status, result json, error, now, ttl, worker_id,
#       agent_type
# A task whose cancel was requested ends 'cancelled' whatever its handler returned (its
# worker may have missed the notice); the script then answers 'cancelled', not 'ok'.
_FINISH = (
    _FINAL_CHECK
    + """
local status, err, out = ARGV[2], ARGV[4], 'ok'
if redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then
  status, err, out = 'cancelled', 'cancelled by request', 'cancelled'
end
redis.call('HSET', KEYS[1], 'status', status, 'error', err, 'finished_at', ARGV[5],
           'worker_id', ARGV[7], 'delivery', ARGV[1], 'agent_type', ARGV[8])
if redis.call('HEXISTS', KEYS[1], 'attempts') == 0 then
  redis.call('HSET', KEYS[1], 'attempts', ARGV[1])
end
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[6]))
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[6]))
return out
"""
)

# KEYS: task key. ARGV: agent_type, now, ttl. Returns the existing status or 'created'.
_QUEUE = """
local st = redis.call('HGET', KEYS[1], 'status')
if st then return st end
redis.call('HSET', KEYS[1], 'status', 'queued', 'agent_type', ARGV[1], 'submitted_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 'created'
"""


# KEYS: task key. ARGV: now, ttl. Returns 'missing', 'final:<status>', 'cancelled' (it had
# not started: it never will) or 'cancelling' (running: its worker stops it).
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'completed' or st == 'failed' or st == 'dead' or st == 'cancelled' then
  return 'final:' .. st
end
redis.call('HSET', KEYS[1], 'cancel_requested', ARGV[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
if st == 'running' then return 'cancelling' end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1],
           'error', 'cancelled before it started')
return 'cancelled'
"""

OUTPUT_MAX_ENTRIES = 20_000  # chunks kept per task, whatever their size
_HEALER_FENCE = 1 << 30  # above any real delivery number: no worker writes after the healer


@dataclass(frozen=True)
class TaskRecord:
    """What the gateway returns for ``GET /api/cluster/task/{id}``."""

    task_id: str
    agent_type: str | None
    status: str
    result: Any
    error: str | None
    attempts: int
    worker_id: str | None
    submitted_at: float | None
    started_at: float | None
    finished_at: float | None
    # lineage of a replayed dead letter (foundry.replays)
    replay_of: str | None = None
    replayed_as: str | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        duration = None
        if self.started_at is not None and self.finished_at is not None:
            duration = round(self.finished_at - self.started_at, 6)
        return {
            "task_id": self.task_id,
            "agent_type": self.agent_type,
            "status": self.status,
            "result": self.result,
            "error": self.error,
            "attempts": self.attempts,
            "worker_id": self.worker_id,
            "submitted_at": self.submitted_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration_seconds": duration,
            "replay_of": self.replay_of,
            "replayed_as": self.replayed_as,
        }


def _f(raw: dict[bytes, bytes], key: str) -> float | None:
    value = raw.get(key.encode())
    return float(value) if value else None


def _s(raw: dict[bytes, bytes], key: str) -> str | None:
    value = raw.get(key.encode())
    return value.decode() if value else None


class TaskStore:
    """Reads and fenced writes of task records; Redis errors become CacheUnavailable."""

    def __init__(
        self,
        redis: aioredis.Redis,
        names: Names,
        ttl: int,
        min_replicas: int = 0,
        wait_timeout: float = 2.0,
    ) -> None:
        self.redis = redis
        self.names = names
        self.ttl = ttl
        self.min_replicas = min_replicas
        self.wait_timeout = wait_timeout
        self._scripts = ScriptBatcher(
            redis, {"claim": _CLAIM, "finish": _FINISH, "queue": _QUEUE, "cancel": _CANCEL}
        )

    async def queue(self, task_id: str, agent_type: str, now: float | None = None) -> str:
        """Record a submission; returns 'created' or the status already stored."""
        out = await self._scripts.call(
            "queue", [self.names.task_key(task_id)], [agent_type, now or time.time(), self.ttl]
        )
        return out.decode() if isinstance(out, bytes) else str(out)

    async def forget_queued(self, task_id: str) -> None:
        """Undo :meth:`queue` when the publish failed (only while still queued)."""
        key = self.names.task_key(task_id)
        try:
            if await self.redis.hget(key, "status") == QUEUED.encode():
                await self.redis.delete(key)
        except RedisError as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc

    async def claim(
        self,
        task_id: str,
        agent_type: str,
        delivery: int,
        worker_id: str,
        submitted_at: float,
    ) -> str:
        """Mark running for this delivery. Returns 'ok', 'stale' or the final status."""
        out = await self._scripts.call(
            "claim",
            [self.names.task_key(task_id)],
            [delivery, worker_id, time.time(), agent_type, self.ttl, submitted_at],
        )
        return out.decode() if isinstance(out, bytes) else str(out)

    async def finish(
        self,
        task_id: str,
        agent_type: str,
        delivery: int,
        worker_id: str,
        status: str,
        result: Any = None,
        error: str | None = None,
    ) -> str:
        """Store a final status and result. Returns 'ok', 'cancelled' (it was cancelled
        meanwhile: stored as such), 'stale' or the status already final."""
        keys = [self.names.task_key(task_id), self.names.result_key(task_id)]
        args = [
            delivery,
            status,
            codec.dumps(result),
            error or "",
            time.time(),
            self.ttl,
            worker_id,
            agent_type,
        ]
        if self.min_replicas:
            out = await self._replicated("finish", keys, args)
        else:
            out = await self._scripts.call("finish", keys, args)
        return out.decode() if isinstance(out, bytes) else str(out)

    async def _replicated(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        """Run a script, then WAIT on the same connection for ``min_replicas`` replicas.

        The script's answer may be a final status stored earlier by a write whose WAIT
        fell short; the EXPIRE between them is a write of this connection that replicas
        reach only after everything before it, so a confirmed WAIT covers that earlier
        write too.
        """
        wait_ms = max(1, int(self.wait_timeout * 1000))
        try:
            for _ in range(2):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._scripts.shas[name], len(keys), *keys, *args)
                    pipe.expire(keys[0], self.ttl)
                    pipe.wait(self.min_replicas, wait_ms)
                    out, _, acked = await pipe.execute(raise_on_error=False)
                if not isinstance(out, NoScriptError):
                    break
                await self.redis.script_load(self._scripts.sources[name])
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc
        for reply in (out, acked):
            if isinstance(reply, Exception):
                raise CacheUnavailable(f"Redis unavailable: {reply}")
        if int(acked) < self.min_replicas:
            raise CacheUnavailable(
                f"WAIT: {acked} of {self.min_replicas} replica(s) confirmed the write within "
                f"{self.wait_timeout:g}s (FOUNDRY_REDIS_MIN_REPLICAS)"
            )
        return out

    async def cancel(self, task_id: str) -> str:
        """Ask for a task to be cancelled: 'missing', 'final:<status>', 'cancelled' or
        'cancelling' (a worker runs it and stops it on the cancel notice)."""
        out = await self._scripts.call(
            "cancel", [self.names.task_key(task_id)], [time.time(), self.ttl]
        )
        return out.decode() if isinstance(out, bytes) else str(out)

    async def mark_dead(self, task_id: str, agent_type: str, evidence: dict[str, Any]) -> str:
        """Final status ``dead`` (poison task or max_deliver exhausted), unless already final."""
        reason = str(evidence.get("reason", "dead-lettered"))
        return await self.finish(
            task_id, agent_type, _HEALER_FENCE, "healer", DEAD, evidence, reason
        )

    async def get(self, task_id: str) -> TaskRecord | None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.names.task_key(task_id))
                pipe.get(self.names.result_key(task_id))
                raw, result_raw = await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc
        if not raw:
            return None
        attempts = raw.get(b"attempts")
        return TaskRecord(
            task_id=task_id,
            agent_type=_s(raw, "agent_type"),
            status=_s(raw, "status") or QUEUED,
            result=codec.loads(result_raw) if result_raw else None,
            error=_s(raw, "error"),
            attempts=int(attempts) if attempts else 0,
            worker_id=_s(raw, "worker_id"),
            submitted_at=_f(raw, "submitted_at"),
            started_at=_f(raw, "started_at"),
            finished_at=_f(raw, "finished_at"),
            replay_of=_s(raw, "replay_of"),
            replayed_as=_s(raw, "replayed_as"),
        )

    async def append_output(self, task_id: str, payloads: list[bytes]) -> None:
        """Keep streamed output chunks with the task (the first OUTPUT_MAX_ENTRIES of them)."""
        if not payloads:
            return
        key = self.names.output_key(task_id)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.rpush(key, *payloads)
                pipe.ltrim(key, 0, OUTPUT_MAX_ENTRIES - 1)
                pipe.expire(key, self.ttl)
                await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc

    async def output(self, task_id: str, start: int = 0) -> list[bytes]:
        """The stored output chunks of a task from index ``start``, oldest first."""
        try:
            items = await self.redis.lrange(self.names.output_key(task_id), start, -1)
        except RedisError as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc
        return [item if isinstance(item, bytes) else str(item).encode() for item in items]
