"""The Lua scripts, run atomically by Redis (``EVALSHA`` through redis-py's ``register_script``).

Token buckets refill continuously (``capacity`` per minute) on Redis' own clock (``TIME``), so
gateways on machines whose clocks disagree still share one bucket. Keys expire once a bucket
would be full again: an idle key costs Redis nothing.
"""

from __future__ import annotations

# A bucket hash holds ``l`` (level) and ``t`` (stamp, ms). Shared by the scripts below.
_REFILL = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function level(key, cap, now)
  local v = redis.call('HMGET', key, 'l', 't')
  if not v[1] then return cap end
  local l = tonumber(v[1]) + (now - tonumber(v[2])) * cap / 60000
  if l > cap then l = cap end
  return l
end
local function store(key, l, now)
  redis.call('HSET', key, 'l', tostring(l), 't', now)
  redis.call('PEXPIRE', key, 120000)
end
"""

#: KEYS: request bucket, token bucket. ARGV: request capacity (0: none), token capacity (0:
#: none), tokens to reserve. Returns {admitted (1/0), wait in ms, tokens reserved}.
ADMIT = (
    _REFILL
    + """
local now = now_ms()
local rcap, tcap, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wait, rl, tl = 0, 0, 0
if rcap > 0 then
  rl = level(KEYS[1], rcap, now)
  if rl < 1 then wait = (1 - rl) * 60000 / rcap end
end
local reserve = 0
if tcap > 0 then
  tl = level(KEYS[2], tcap, now)
  reserve = math.min(want, math.floor(tcap))
  local missing = reserve - tl
  if missing > 0 then wait = math.max(wait, missing * 60000 / tcap) end
end
if wait > 0 then return {0, math.ceil(wait), 0} end
if rcap > 0 then store(KEYS[1], rl - 1, now) end
if tcap > 0 then store(KEYS[2], tl - reserve, now) end
return {1, 0, reserve}
"""
)

#: KEYS: token bucket. ARGV: capacity, tokens to take (negative: give back). Returns the level.
SETTLE = (
    _REFILL
    + """
local now = now_ms()
local cap, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
local l = level(KEYS[1], cap, now) - delta
if l > cap then l = cap end
store(KEYS[1], l, now)
return tostring(l)
"""
)

#: KEYS: the budget. ARGV: deposits to add, withdraw (1/0), reserve (start level), cap.
#: Returns {withdrawn (1/0), level}.
BUDGET = """
local l = tonumber(redis.call('GET', KEYS[1]) or ARGV[3])
l = math.min(tonumber(ARGV[4]), l + tonumber(ARGV[1]))
local took = 0
if ARGV[2] == '1' and l >= 1 then
  l = l - 1
  took = 1
end
redis.call('SET', KEYS[1], tostring(l))
return {took, tostring(l)}
"""

#: KEYS: the variant's health hash, the zset of cooling variants (score: until), the set of
#: failing variants. ARGV: variant, now (s), attempt start (s, '' for now), threshold,
#: cooldown (s). Returns {started a cooldown (1/0), until}.
FAILURE = """
local h = redis.call('HMGET', KEYS[1], 'f', 'c', 'u')
local failures, counted, untl = tonumber(h[1] or '0'), tonumber(h[2] or '-1'), tonumber(h[3] or '0')
local now, started = tonumber(ARGV[2]), tonumber(ARGV[3])
if started and started < counted then return {0, tostring(untl)} end
failures = failures + 1
local began = 0
if failures >= tonumber(ARGV[4]) then
  untl = now + tonumber(ARGV[5])
  failures = tonumber(ARGV[4]) - 1
  began = 1
  redis.call('ZADD', KEYS[2], untl, ARGV[1])
end
redis.call('HSET', KEYS[1], 'f', failures, 'c', tostring(now), 'u', tostring(untl))
redis.call('EXPIRE', KEYS[1], 86400)
redis.call('SADD', KEYS[3], ARGV[1])
return {began, tostring(untl)}
"""

#: KEYS: health hash, cooling zset, failing set. ARGV: variant.
SUCCESS = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

#: KEYS: cooling zset, failing set. ARGV: now (s). Returns {cooling: [name, until, ...],
#: failing: [name, ...]}; cooldowns that ended are dropped from the zset.
SNAPSHOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local cooling = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
return {cooling, redis.call('SMEMBERS', KEYS[2])}
"""
