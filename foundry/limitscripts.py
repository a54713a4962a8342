"""The Lua run by :mod:`foundry.ratelimit` on Redis, each script one atomic step.

Keys of a limit ``<k>`` = ``foundry:<ns>:limit:<name>``:

- ``<k>`` and ``<k>:sum``: the sliding window log (member ``<ticket>|<cost>``, score
  the grant time in ms by the Redis clock) and the cost inside the window. A
  request to a provider (a gated name) is scored ``hold`` ms ahead while it is
  on its way and rescored to the time of its answer, which comes after the
  provider counted it; so the window never leaves a request before the
  provider's window does, however late it arrived there.
- ``<k>:pause``: blocks the name (a provider's ``Retry-After``).
- gated names only: ``<k>:flight`` (tickets on their way, scored by when they
  stop counting), ``<k>:probe`` (the ticket of the one request let through to
  learn whether the provider takes requests again), ``<k>:credit`` (requests
  the provider said it still takes, less those sent since, until its reset)
  and ``<k>:open`` (a probe was answered without rate-limit headers: no credit
  to keep).
"""

from __future__ import annotations

# KEYS per name (7): window, sum, pause, credit, open, flight, probe.
# ARGV: n, ticket, probe poll ms; per name (5): count, period ms, cost, hold ms, gated (0/1).
# Returns 0 when granted, else the ms to wait.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local ticket = ARGV[2]
local poll = tonumber(ARGV[3])
local wait = 0
local costs, probes = {}, {}
local function cost_of(member)
  return tonumber(string.match(member, '|(%d+)$')) or 0
end
local function longer(ms)
  if ms > wait then wait = ms end
end
for i = 1, n do
  local k, a = 7 * (i - 1), 3 + 5 * (i - 1)
  local z, s = KEYS[k + 1], KEYS[k + 2]
  local limit, period = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local hold = tonumber(ARGV[a + 4])
  local cost = math.min(tonumber(ARGV[a + 3]), limit)
  costs[i] = cost
  longer(redis.call('PTTL', KEYS[k + 3]))
  if ARGV[a + 5] == '1' then
    if redis.call('EXISTS', KEYS[k + 7]) == 1 then
      longer(poll)
    else
      local credit = redis.call('GET', KEYS[k + 4])
      if credit then
        if tonumber(credit) < 1 then longer(math.max(1, redis.call('PTTL', KEYS[k + 4]))) end
      elseif redis.call('EXISTS', KEYS[k + 5]) == 0 then
        probes[i] = true
      end
    end
  end
  if limit > 0 then
    local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - period)
    local sum = tonumber(redis.call('GET', s) or '0')
    for _, m in ipairs(old) do sum = sum - cost_of(m) end
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - period)
      if sum < 0 or redis.call('ZCARD', z) == 0 then sum = 0 end
      redis.call('SET', s, sum, 'PX', period + hold)
    end
    if sum + cost > limit then
      local need = sum + cost - limit
      local freed = 0
      local until_free = period
      local entries = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        freed = freed + cost_of(entries[j])
        if freed >= need then
          -- a request still on its way frees a period after its answer: say, now
          until_free = math.min(tonumber(entries[j + 1]), now) + period - now
          break
        end
      end
      longer(math.max(1, until_free))
    end
  end
end
if wait > 0 then return wait end
for i = 1, n do
  local k, a = 7 * (i - 1), 3 + 5 * (i - 1)
  local limit, period = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local hold = tonumber(ARGV[a + 4])
  if limit > 0 then
    local z, s = KEYS[k + 1], KEYS[k + 2]
    redis.call('ZADD', z, now + hold, ticket .. '|' .. costs[i])
    redis.call('INCRBY', s, costs[i])
    redis.call('PEXPIRE', z, period + hold)
    redis.call('PEXPIRE', s, period + hold)
  end
  if ARGV[a + 5] == '1' then
    redis.call('ZADD', KEYS[k + 6], now + hold, ticket)
    redis.call('PEXPIRE', KEYS[k + 6], hold)
    if redis.call('EXISTS', KEYS[k + 4]) == 1 then
      redis.call('DECR', KEYS[k + 4])
    elseif probes[i] then
      redis.call('SET', KEYS[k + 7], ticket, 'PX', hold)
    end
  end
end
return 0
"""

# KEYS: window, pause, credit, open, flight, probe.
# ARGV: ticket, window cost, status (0: no answer), remaining (-1: not said), reset ms,
# pause ms (a 429), open ms.
ANSWER = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ticket = ARGV[1]
local member = ticket .. '|' .. ARGV[2]
local status = tonumber(ARGV[3])
if redis.call('ZSCORE', KEYS[1], member) then
  redis.call('ZADD', KEYS[1], 'XX', now, member)
end
redis.call('ZREM', KEYS[5], ticket)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
local was_probe = redis.call('GET', KEYS[6]) == ticket
if was_probe then redis.call('DEL', KEYS[6]) end
if status == 429 then
  local ms = tonumber(ARGV[6])
  if redis.call('PTTL', KEYS[2]) < ms then redis.call('SET', KEYS[2], '1', 'PX', ms) end
  redis.call('DEL', KEYS[3], KEYS[4], KEYS[6])
  return 1
end
if status < 200 or status > 299 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local remaining = tonumber(ARGV[4])
if remaining >= 0 then
  local reset = math.max(1, tonumber(ARGV[5]))
  local credit = remaining - redis.call('ZCARD', KEYS[5])
  local current = redis.call('GET', KEYS[3])
  if was_probe or not current or credit < tonumber(current) then
    redis.call('SET', KEYS[3], credit, 'PX', reset)
  elseif redis.call('PTTL', KEYS[3]) < reset then
    redis.call('PEXPIRE', KEYS[3], reset)
  end
  redis.call('DEL', KEYS[4])
elseif was_probe then
  redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[7]))
end
return 0
"""

SETTLE = """
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

PAUSE = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) >= ms then return 0 end
redis.call('SET', KEYS[1], '1', 'PX', ms)
return 1
"""
