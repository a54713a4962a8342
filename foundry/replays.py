"""Replays of dead letters: the new task's id and the Redis records that link the two.

A replayed dead letter runs again as a new task whose id keeps its lineage:
``<stem>.replay-<n>``, where the stem is the original id without a trailing
``.replay-<n>`` (so a replay of ``build-7.replay-1`` is ``build-7.replay-2``, not
an ever longer id) and ``n`` counts the replays made under that stem. A stem
that would push the id past 128 characters is cut and given a hash of the whole
id, so every replay id matches ``TASK_ID_RE``.

Redis holds, per namespace:

- ``replayed:<dead task id>``, a hash: AGENT_DEAD sequence → the new task id.
  A letter with an entry has been replayed and is never replayed again (a bulk
  replay skips it, a single replay answers 409 naming the new id). Kept
  without expiry, as AGENT_DEAD keeps letters by count and size, not age.
- ``replays:<stem>``: the last ``n`` used (also kept).
- the new task's record, created ``queued`` with ``replay_of``; the original's
  record, while it exists, gets ``replayed_as``.

One Lua script claims a replay atomically, so two replays of the same letter at
once give one new task, never two.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from foundry.contracts import TASK_ID_RE
from foundry.errors import AlreadyReplayed, CacheUnavailable
from foundry.names import Names
from foundry.scripts import ScriptBatcher

REPLAY_RE = re.compile(r"^(?P<stem>.+)\.replay-(?P<n>[0-9]{1,9})$")
MAX_N_DIGITS = 9
# the longest stem that leaves room for ".replay-<9 digits>" within the 128 of TASK_ID_RE
STEM_MAX = 128 - len(".replay-") - MAX_N_DIGITS
HASH_CHARS = 8
CLAIM_ATTEMPTS = 8

# KEYS: marker hash, counter, new task key, original task key.
# ARGV: dead seq, n, new id, agent_type, now, ttl, original id.
# Answers {'ok', new id}, {'replayed', new id of the earlier replay}, {'stale', counter}
# (n is not above the counter: another replay used it) or {'taken', n} (a task with that id
# exists: skip n).
_CLAIM = """
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done then return {'replayed', done} end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[2]) <= n then return {'stale', tostring(n)} end
redis.call('SET', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'taken', ARGV[2]} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[3], 'status', 'queued', 'agent_type', ARGV[4], 'submitted_at', ARGV[5],
           'replay_of', ARGV[7])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'replayed_as', ARGV[3])
end
return {'ok', ARGV[3]}
"""

# KEYS: marker hash, new task key, original task key. ARGV: dead seq, new id.
# Undoes a claim whose publish failed (only what that claim wrote, only while queued).
_UNDO = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if redis.call('HGET', KEYS[2], 'status') == 'queued' then redis.call('DEL', KEYS[2]) end
if redis.call('HGET', KEYS[3], 'replayed_as') == ARGV[2] then
  redis.call('HDEL', KEYS[3], 'replayed_as')
end
return 1
"""


def replay_stem(task_id: str) -> str:
    """The lineage stem of ``task_id``: without a trailing ``.replay-<n>``, at most STEM_MAX."""
    found = REPLAY_RE.fullmatch(task_id)
    stem = found.group("stem") if found else task_id
    if len(stem) <= STEM_MAX:
        return stem
    digest = hashlib.sha256(stem.encode()).hexdigest()[:HASH_CHARS]
    return f"{stem[: STEM_MAX - HASH_CHARS - 1]}.{digest}"


def replay_id(stem: str, n: int) -> str:
    """The id of replay ``n`` under ``stem`` (a valid task id for 1 ≤ n < 10**9)."""
    new_id = f"{stem}.replay-{n}"
    if not 1 <= n < 10**MAX_N_DIGITS or not TASK_ID_RE.fullmatch(new_id):
        raise ValueError(f"no replay id for stem {stem!r} and n={n}")
    return new_id


def _replay_number(task_id: str, stem: str) -> int:
    """n when ``task_id`` is ``<stem>.replay-<n>`` itself, else 0."""
    found = REPLAY_RE.fullmatch(task_id)
    return int(found.group("n")) if found and found.group("stem") == stem else 0


@dataclass(frozen=True)
class Claim:
    """A replay that was claimed: the letter, and the task that will run it again."""

    task_id: str
    dead_seq: int
    new_task_id: str


class ReplayLedger:
    """Claims replays and reads which letters were replayed; Redis errors → CacheUnavailable."""

    def __init__(self, redis: aioredis.Redis, names: Names, ttl: int) -> None:
        self.redis = redis
        self.names = names
        self.ttl = ttl
        self._scripts = ScriptBatcher(redis, {"claim": _CLAIM, "undo": _UNDO})

    async def claim(
        self, task_id: str, dead_seq: int, agent_type: str, now: float | None = None
    ) -> Claim:
        """Reserve the next replay id of the letter and record the lineage, or raise
        AlreadyReplayed."""
        names, stem = self.names, replay_stem(task_id)
        marker, counter = names.replay_marker_key(task_id), names.replay_counter_key(stem)
        n = floor = _replay_number(task_id, stem) + 1  # a replay's replay numbers past it
        for _ in range(CLAIM_ATTEMPTS):
            new_id = replay_id(stem, n)
            keys = [marker, counter, names.task_key(new_id), names.task_key(task_id)]
            args = [dead_seq, n, new_id, agent_type, now or time.time(), self.ttl, task_id]
            outcome, value = (_text(v) for v in await self._scripts.call("claim", keys, args))
            if outcome == "ok":
                return Claim(task_id, dead_seq, new_id)
            if outcome == "replayed":
                raise AlreadyReplayed(task_id, value)
            n = max(floor, int(value) + 1)  # stale: past the counter; taken: past that id
        raise CacheUnavailable(
            f"no free replay id for {task_id!r} after {CLAIM_ATTEMPTS} tries (last {new_id!r})"
        )

    async def undo(self, claim: Claim) -> None:
        """Forget a claim whose task could not be published."""
        keys = [
            self.names.replay_marker_key(claim.task_id),
            self.names.task_key(claim.new_task_id),
            self.names.task_key(claim.task_id),
        ]
        await self._scripts.call("undo", keys, [claim.dead_seq, claim.new_task_id])

    async def replayed_as(self, letters: Iterable[tuple[str, int]]) -> list[str | None]:
        """For each (dead task id, AGENT_DEAD sequence): the task it was replayed as, or None."""
        wanted = list(letters)
        if not wanted:
            return []
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id, seq in wanted:
                    pipe.hget(self.names.replay_marker_key(task_id), str(seq))
                found = await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(f"Redis unavailable: {exc}") from exc
        return [_text(v) if v is not None else None for v in found]


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
