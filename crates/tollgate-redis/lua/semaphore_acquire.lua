-- Acquire permits (after prelude.lua and semaphore_common.lua; keys there).
--   ARGV[1] holder id        ARGV[2] permits (1..capacity)   ARGV[3] capacity
--   ARGV[4] lease (µs)       ARGV[5] queue place TTL (µs), '' = one-shot, never queue
--   ARGV[6] now (µs), ''     = the server's TIME
--   ARGV[7] TTL margin (ms)  ARGV[8] deadline (server µs, '' = none; see semaphore_common)
-- Returns {1, lease end, in_use} when granted, {0, in_use, µs until the earliest lease
-- end or -1} when not.
-- FIFO: the permits asked for by live waiters queued ahead of the caller (all of them for a
-- caller not in the queue) count as used.
local id = ARGV[1]
local want = num(ARGV[2])
local capacity = num(ARGV[3])
local lease = num(ARGV[4])
local queue_ttl = ARGV[5]
local now = clock(ARGV[6])
local margin = num(ARGV[7])

purge(now)

if redis.call('ZSCORE', H, id) then
  -- A retry of a granted call whose answer was lost: one grant, fresh lease.
  redis.call('ZADD', H, str(now + lease), id)
  leave_queue(id)
  touch(now, margin)
  return { 1, now + lease, in_use() }
end

local used = in_use()
local rank = redis.call('ZRANK', Q, id)
local ahead = 0
if used + want <= capacity then
  ahead = queued_ahead(rank, capacity - used - want)
end

if used + ahead + want <= capacity then
  local expires = now + lease
  redis.call('ZADD', H, str(expires), id)
  redis.call('HSET', P, id, str(want))
  set_in_use(used + want)
  if rank then
    leave_queue(id)
  end
  touch(now, margin)
  return { 1, expires, used + want }
end

if queue_ttl ~= '' then
  if not rank then
    local ticket = redis.call('INCR', S)
    redis.call('ZADD', Q, ticket, id)
  end
  redis.call('ZADD', W, str(now + num(queue_ttl)), id)
  redis.call('HSET', N, id, str(want))
elseif rank then
  leave_queue(id)
end
touch(now, margin)
return { 0, used, next_expiry_in(now) }
