-- Release a holder's permits and its queue place (after prelude.lua and
-- semaphore_common.lua; keys there).
--   ARGV[1] holder id   ARGV[2] now (µs), '' = the server's TIME   ARGV[3] TTL margin (ms)
--   ARGV[4] deadline (server µs, '' = none; see semaphore_common)
-- Returns 1 when the holder held live permits (now free), 0 when it held nothing: its lease
-- had ended (purged first, so a late release never frees anyone else's permits).
local id = ARGV[1]
local now = clock(ARGV[2])
local margin = num(ARGV[3])

purge(now)
local released = 0
if redis.call('ZREM', H, id) == 1 then
  local held = num(redis.call('HGET', P, id)) or 0
  local total = in_use()
  redis.call('HDEL', P, id)
  set_in_use(math.max(0, total - held))
  released = 1
end
leave_queue(id)
touch(now, margin)
return released
