-- Count a semaphore (after prelude.lua and semaphore_common.lua; keys there).
--   ARGV[1] now (µs), '' = the server's TIME   ARGV[2] TTL margin (ms)
--   ARGV[3] deadline (server µs, '' = none)
-- Returns {permits in use, live holders, live waiters}.
local now = clock(ARGV[1])
local margin = num(ARGV[2])
purge(now)
touch(now, margin)
return { in_use(), redis.call('ZCARD', H), redis.call('ZCARD', Q) }
