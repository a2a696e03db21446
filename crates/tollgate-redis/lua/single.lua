-- tollgate: one operation on one key (appended to prelude.lua and one algorithm's file).
--
-- KEYS[1]  the key's state (layout: see the algorithm's file)
-- ARGV[1]  the operation: 'c' check (decide, charge when admitted), 'p' peek (decide only),
--          'r' refund, 'x' reset (delete the state)
-- ARGV[2]  now in µs since the UNIX epoch, or '' for the server clock (TIME)
-- ARGV[3]  check/peek: the cost (1 <= cost <= the capacity of every rate; checked by the
--          client); refund: the amount (>= 1); reset: ignored
-- ARGV[4]  margin in ms added to every expiry (0 with the server clock)
-- ARGV[5]  the call's deadline in server-clock µs, or '' for none (see late() in prelude.lua)
-- ARGV[6]  n, the number of rates
-- ARGV[7…] the algorithm's parameters, rate by rate
--
-- Returns, for check and peek, integers (times in µs):
--   {allowed (1/0), limit, remaining, retry_after, reset_after, denied_by (0-based, -1 = none)}
-- and an empty array for refund and reset; the integer LATE (-1) for a call past its
-- deadline, whatever the operation (then nothing was read or written).

local key = KEYS[1]
local op = ARGV[1]
if late(ARGV[5]) then
  return LATE
end
if op == 'x' then
  redis.call('DEL', key)
  return {}
end
local now = clock(ARGV[2])
local cost = num(ARGV[3])
local margin = num(ARGV[4])
local p = THIS.parse(ARGV, 7, num(ARGV[6]))
local s = THIS.load(key, p)
if op == 'r' then
  THIS.refund(key, p, s, now, cost, margin)
  return {}
end
local verdicts, next = THIS.eval(p, s, now, cost)
local d = combine(verdicts)
if op == 'c' then
  if d[1] == 1 then
    THIS.commit(key, p, s, next, now, margin)
  else
    THIS.settle(key, p, s, now, margin)
  end
end
return d
