-- Extend a live holder's lease to now + lease (after prelude.lua and semaphore_common.lua;
-- keys there).
--   ARGV[1] holder id   ARGV[2] lease (µs)   ARGV[3] now (µs), '' = the server's TIME
--   ARGV[4] TTL margin (ms)   ARGV[5] deadline (server µs, '' = none)
-- Returns {1, new lease end}, or {0, 0} when the lease had already ended (nothing is
-- brought back).
local id = ARGV[1]
local lease = num(ARGV[2])
local now = clock(ARGV[3])
local margin = num(ARGV[4])

purge(now)
if not redis.call('ZSCORE', H, id) then
  touch(now, margin)
  return { 0, 0 }
end
local expires = now + lease
redis.call('ZADD', H, 'XX', str(expires), id)
touch(now, margin)
return { 1, expires }
