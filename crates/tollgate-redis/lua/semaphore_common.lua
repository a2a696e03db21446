-- tollgate semaphore: shared helpers (appended after prelude.lua, before one of
-- semaphore_acquire.lua / semaphore_release.lua / semaphore_extend.lua / semaphore_status.lua).
--
-- Keys of one semaphore (all with the hash tag {<name>}, so they share a Cluster slot):
--   KEYS[1] holders  ZSET  holder id -> lease end (µs)
--   KEYS[2] permits  HASH  holder id -> permits held
--   KEYS[3] queue    ZSET  waiter id -> ticket (FIFO order)
--   KEYS[4] waiting  ZSET  waiter id -> end of its queue place (µs) unless refreshed
--   KEYS[5] wanted   HASH  waiter id -> permits asked for
--   KEYS[6] tickets  STRING the ticket counter (deleted when the queue is empty)
--   KEYS[7] in use   STRING the sum of permits of live holders (deleted at 0)
--
-- Arguments: each operation's own (documented in its file), then the deadline (last).
--
-- Invariants: a holder counts while now < lease end; in_use = sum of permits of live
-- holders, kept as a running count (KEYS[7]) by every script that adds or removes a holder;
-- every call first drops expired holders and waiters; every key written gets a TTL in the
-- same call: the latest lease end / queue place end, rounded up to the ms, plus the margin.
-- Nothing outlives the last holder or waiter.
--
-- Cost: O(log n) per call in the number of holders and waiters (sorted-set lookups), plus
-- the expired entries dropped (each once) and a walk of the wait queue that stops at the
-- free room (see queued_ahead). No call reads every holder.

local H, P, Q, W, N, S, C = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]

-- Every semaphore script takes the call's deadline (server-clock µs, '' for none) as its LAST
-- argument: a call that reaches Redis after it (queued behind a stall, while its caller timed
-- out and was told the call failed) changes nothing and returns LATE. A late acquire would
-- grant permits nobody receives; a late extend would renew a lease its holder believes lost.
if late(ARGV[#ARGV]) then
  return LATE
end

-- Permits in use. Rebuilt from the permits hash when the running count is missing while
-- holders exist (state written before the count existed, or a key evicted): O(holders) then,
-- once.
local function in_use()
  local v = redis.call('GET', C)
  if v then
    return num(v)
  end
  local total = 0
  if redis.call('EXISTS', P) == 1 then
    local values = redis.call('HVALS', P)
    for i = 1, #values do
      total = total + num(values[i])
    end
  end
  return total
end

local function set_in_use(total)
  if total > 0 then
    redis.call('SET', C, str(total))
  else
    redis.call('DEL', C)
  end
end

-- Runs redis.call(cmd, key, ...ids) in chunks (unpack has a stack limit).
local function each_chunk(cmd, key, ids)
  for i = 1, #ids, 500 do
    redis.call(cmd, key, unpack(ids, i, math.min(i + 499, #ids)))
  end
end

local function purge(now)
  local dead = redis.call('ZRANGEBYSCORE', H, '-inf', str(now))
  if #dead > 0 then
    local freed = 0
    for i = 1, #dead, 500 do
      local held = redis.call('HMGET', P, unpack(dead, i, math.min(i + 499, #dead)))
      for j = 1, #held do
        freed = freed + (num(held[j]) or 0)
      end
    end
    local total = in_use()
    each_chunk('ZREM', H, dead)
    each_chunk('HDEL', P, dead)
    set_in_use(math.max(0, total - freed))
  end
  local gone = redis.call('ZRANGEBYSCORE', W, '-inf', str(now))
  if #gone > 0 then
    each_chunk('ZREM', Q, gone)
    each_chunk('ZREM', W, gone)
    each_chunk('HDEL', N, gone)
  end
end

-- The permits asked for by the live waiters queued before position `upto` (0-based, exclusive;
-- nil = the whole queue), summed from the head 100 at a time and stopped as soon as the sum
-- exceeds `room`: beyond that the caller cannot be granted whatever the rest holds. Every
-- waiter asks for at least 1, so this reads at most room + 1 entries.
local function queued_ahead(upto, room)
  local last
  if upto then
    last = upto - 1
  else
    last = redis.call('ZCARD', Q) - 1
  end
  local total, first = 0, 0
  while first <= last do
    local stop = math.min(first + 99, last)
    local ids = redis.call('ZRANGE', Q, first, stop)
    if #ids == 0 then
      break
    end
    local wanted = redis.call('HMGET', N, unpack(ids))
    for j = 1, #wanted do
      total = total + (num(wanted[j]) or 0)
      if total > room then
        return total
      end
    end
    first = stop + 1
  end
  return total
end

local function leave_queue(id)
  local removed = redis.call('ZREM', Q, id)
  redis.call('ZREM', W, id)
  redis.call('HDEL', N, id)
  return removed
end

local function latest(key)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 2 then
    return num(last[2])
  end
  return 0
end

-- Sets every key's TTL to the latest lease or queue place end (plus the margin).
local function touch(now, margin)
  local horizon = math.max(latest(H), latest(W))
  if redis.call('ZCARD', Q) == 0 then
    redis.call('DEL', S)
  end
  if horizon <= now then
    return
  end
  local ms = ttl_ms(horizon, now, margin)
  for i = 1, 7 do
    redis.call('PEXPIRE', KEYS[i], ms)
  end
end

-- µs until the earliest live lease ends, or -1 without holders.
local function next_expiry_in(now)
  local first = redis.call('ZRANGE', H, 0, 0, 'WITHSCORES')
  if #first == 2 then
    return num(first[2]) - now
  end
  return -1
end
