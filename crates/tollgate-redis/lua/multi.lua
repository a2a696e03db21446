-- tollgate: one all-or-nothing decision over several keys, each with its own policy
-- (appended to prelude.lua and every algorithm's file). Either every key admits its cost and
-- all are charged, or none is charged (a denied token bucket still persists its refill, as a
-- single-key check does). On Redis Cluster every key must be in one slot (hash tags).
--
-- KEYS[1..k]  the keys' states (distinct keys)
-- ARGV[1]     'c' check or 'p' peek
-- ARGV[2]     now in µs since the UNIX epoch, or '' for the server clock (TIME)
-- ARGV[3]     margin in ms added to every expiry
-- ARGV[4]     the call's deadline in server-clock µs, or '' for none (see late() in
--             prelude.lua)
-- then, for each key in KEYS order:
--   algorithm name ('gcra', 'token_bucket', 'sliding_log', 'sliding_window',
--   'fixed_window'), cost, n (rates), and the algorithm's parameters rate by rate
--
-- Returns {allowed (1/0), then for each key its own 6 decision fields as single.lua returns
-- them}: a key's fields are what that key alone would decide (its `allowed` may be 1 while
-- the whole call is denied; then nothing was charged). A call past its deadline returns the
-- integer LATE (-1) and changes nothing.

if late(ARGV[4]) then
  return LATE
end
local now = clock(ARGV[2])
local margin = num(ARGV[3])
local op = ARGV[1]
local i = 5
local calls = {}
local all = 1
for k = 1, #KEYS do
  local m = ALG[ARGV[i]]
  local cost = num(ARGV[i + 1])
  local p
  p, i = m.parse(ARGV, i + 3, num(ARGV[i + 2]))
  local s = m.load(KEYS[k], p)
  local verdicts, next = m.eval(p, s, now, cost)
  local d = combine(verdicts)
  if d[1] == 0 then all = 0 end
  calls[k] = { m = m, p = p, s = s, next = next, d = d }
end
local out = { all }
for k = 1, #KEYS do
  local c = calls[k]
  if op == 'c' then
    if all == 1 then
      c.m.commit(KEYS[k], c.p, c.s, c.next, now, margin)
    else
      c.m.settle(KEYS[k], c.p, c.s, now, margin)
    end
  end
  for f = 1, 6 do out[#out + 1] = c.d[f] end
end
return out
