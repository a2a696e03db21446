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
--
-- Invariants: a holder counts while now < lease end; in_use = sum of permits of live
-- holders; every call first drops expired holders and waiters; every key written gets a TTL
-- in the same call: the latest lease end / queue place end, rounded up to the ms, plus the
-- margin. Nothing outlives the last holder or waiter.

local H, P, Q, W, N, S = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]

-- Runs redis.call(cmd, key, ...ids) in chunks (unpack has a stack limit).
local function each_chunk(cmd, key, ids)
  for i = 1, #ids, 500 do
    redis.call(cmd, key, unpack(ids, i, math.min(i + 499, #ids)))
  end
end

local function purge(now)
  local dead = redis.call('ZRANGEBYSCORE', H, '-inf', str(now))
  if #dead > 0 then
    each_chunk('ZREM', H, dead)
    each_chunk('HDEL', P, dead)
  end
  local gone = redis.call('ZRANGEBYSCORE', W, '-inf', str(now))
  if #gone > 0 then
    each_chunk('ZREM', Q, gone)
    each_chunk('ZREM', W, gone)
    each_chunk('HDEL', N, gone)
  end
end

local function in_use()
  local total = 0
  local values = redis.call('HVALS', P)
  for i = 1, #values do
    total = total + num(values[i])
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
  for i = 1, 6 do
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
