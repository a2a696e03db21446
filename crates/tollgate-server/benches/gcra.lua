-- GCRA with redis-cell's CL.THROTTLE interface and reply, for the side-by-side benchmark
-- (benches/resp_vs_redis.rs): what a team without redis-cell runs with EVALSHA.
--
-- KEYS[1]  the key
-- ARGV[1]  max_burst (the limit is max_burst + 1)
-- ARGV[2]  count per period
-- ARGV[3]  period in seconds
-- ARGV[4]  quantity (default 1)
-- Reply: {limited, limit, remaining, retry_after, reset_after}, seconds rounded as redis-cell
-- (whole seconds, plus one if the millisecond part is non-zero), retry_after -1 when allowed.
local burst = tonumber(ARGV[1]) + 1
local interval = math.ceil(tonumber(ARGV[3]) * 1000000 / tonumber(ARGV[2]))
local tolerance = interval * burst
local quantity = tonumber(ARGV[4] or '1')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + quantity * interval

local function secs(us)
  local s = math.floor(us / 1000000)
  if math.floor((us % 1000000) / 1000) > 0 then s = s + 1 end
  return s
end

if new_tat - tolerance > now then
  local left = now + tolerance - tat
  if left < 0 then left = 0 end
  return {1, burst, math.floor(left / interval), secs(new_tat - tolerance - now), secs(tat - now)}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {0, burst, math.floor((now + tolerance - new_tat) / interval), -1, secs(new_tat - now)}
