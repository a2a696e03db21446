-- tollgate: shared helpers, prepended to every script (see single.lua and multi.lua for the
-- KEYS/ARGV of a call, and each algorithm's file for its parameters and state layout).
--
-- Numbers. Lua numbers are IEEE doubles: every integer below 2^53 is exact, and so are
-- +, -, * and comparisons of such integers as long as the result stays below 2^53. tollgate
-- keeps every value below that: times are µs since the UNIX epoch (about 2^50.6 today),
-- every policy horizon is at most 2^52 µs (docs/semantics.md), costs are at most a rate's
-- capacity, and each formula below is arranged so no intermediate exceeds 2^53 (see the
-- comments where it matters). Division is never `/` alone: idiv() floors exactly and
-- imod() is derived from it. Numbers are written back with '%.0f' (exact), never with
-- tostring() (which keeps 14 significant digits only).

if redis.replicate_commands then
  -- Redis < 5 replicates scripts verbatim and then forbids TIME before a write; from
  -- Redis 5 on this is the default (and from 7 a no-op), so an error here is harmless.
  pcall(redis.replicate_commands)
end

local function num(s)
  return tonumber(s)
end

local function str(n)
  return string.format('%.0f', n)
end

-- floor(a / b) for integers 0 <= a < 2^53, 1 <= b < 2^53, exactly: the double quotient is
-- correctly rounded, so it is at most one off; fix it up in integers.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function imod(a, b)
  return a - idiv(a, b) * b
end

local function ceil_div(a, b)
  return idiv(a + b - 1, b)
end

-- Exact products. a * b of two integers below 2^53 can reach 2^106, beyond what a double
-- holds exactly (the sliding-window counter multiplies a limit of up to 10^9 by a window of up
-- to a year in µs). limbs() splits x < 2^54 into three base-2^18 digits; mul() returns the
-- exact product as six such digits, least significant first (every partial sum stays below
-- 2^40, so each step is exact).
local LIMB = 262144 -- 2^18

local function limbs(x)
  local x0 = x % LIMB
  x = (x - x0) / LIMB
  local x1 = x % LIMB
  return x0, x1, (x - x1) / LIMB
end

local function mul(a, b)
  local a0, a1, a2 = limbs(a)
  local b0, b1, b2 = limbs(b)
  local p = { a0 * b0, a0 * b1 + a1 * b0, a0 * b2 + a1 * b1 + a2 * b0, a1 * b2 + a2 * b1,
    a2 * b2, 0 }
  local carry = 0
  for i = 1, 6 do
    local v = p[i] + carry
    local d = v % LIMB
    p[i] = d
    carry = (v - d) / LIMB
  end
  return p
end

-- Compares a * b with c * d exactly: -1, 0 or 1.
local function mulcmp(a, b, c, d)
  local x, y = mul(a, b), mul(c, d)
  for i = 6, 1, -1 do
    if x[i] ~= y[i] then
      if x[i] < y[i] then return -1 end
      return 1
    end
  end
  return 0
end

-- floor(a * b / c) exactly, for a result below 2^53 (callers guarantee it): the double
-- estimate is within a unit or two of the truth; fix it up with exact comparisons.
local function muldiv(a, b, c)
  local q = math.floor(a * b / c)
  while q > 0 and mulcmp(q, c, a, b) > 0 do q = q - 1 end
  while mulcmp(q + 1, c, a, b) <= 0 do q = q + 1 end
  return q
end

-- The server's clock in µs (TIME, read once per script run).
local server_us = nil
local function server_now()
  if server_us == nil then
    local t = redis.call('TIME')
    server_us = num(t[1]) * 1000000 + num(t[2])
  end
  return server_us
end

-- The time of the decision in µs: the caller's (ARGV) or the server's clock.
local function clock(arg)
  if arg == '' then
    return server_now()
  end
  return num(arg)
end

-- The late marker: a script whose call carries a deadline (server-clock µs, '' for none)
-- and reaches Redis after it returns LATE and changes nothing. The client has given up on
-- such a call (or is about to) and reports it failed, so it must not charge the key: a
-- caller told "failed" is never charged (docs/semantics.md).
local LATE = -1
local function late(deadline)
  return deadline ~= '' and server_now() > num(deadline)
end

-- Expiry in ms for a state that is fresh from `horizon` on: the horizon rounded UP to the
-- next ms (never early), at least 1 ms, plus the configured margin (ARGV, ms).
local function ttl_ms(horizon, now, margin)
  local ms = 1
  if horizon > now then
    ms = ceil_div(horizon - now, 1000)
  end
  return ms + margin
end

-- Splits a stored "v1,v2,..." into numbers.
local function decode(raw)
  local out = {}
  if raw then
    for part in string.gmatch(raw, '[^,]+') do
      out[#out + 1] = num(part)
    end
  end
  return out
end

local function encode(values)
  local parts = {}
  for i = 1, #values do
    parts[i] = str(values[i])
  end
  return table.concat(parts, ',')
end

-- One rate's verdict: {allowed, limit, remaining, retry, reset, reset_uncharged}.
local function verdict(allowed, limit, remaining, retry, reset, reset_uncharged)
  return { allowed = allowed, limit = limit, remaining = remaining, retry = retry,
           reset = reset, reset_uncharged = reset_uncharged }
end

-- All-or-nothing combination of several rates (algorithm::combine in Rust):
-- returns {allowed 0/1, limit, remaining, retry_after, reset_after, denied_by (0-based, -1)}.
local function combine(v)
  local all = true
  for i = 1, #v do
    if not v[i].allowed then all = false end
  end
  if all then
    local b = 1
    local reset = 0
    for i = 1, #v do
      if v[i].remaining < v[b].remaining then b = i end
      if v[i].reset > reset then reset = v[i].reset end
    end
    return { 1, v[b].limit, v[b].remaining, 0, reset, -1 }
  end
  local d = nil
  local reset = 0
  for i = 1, #v do
    if not v[i].allowed and (d == nil or v[i].retry > v[d].retry) then d = i end
    local r = v[i].reset
    if v[i].allowed then r = v[i].reset_uncharged end
    if r > reset then reset = r end
  end
  return { 0, v[d].limit, v[d].remaining, v[d].retry, reset, d - 1 }
end

-- The parameters of algorithms with a limit L and a window W (µs) per rate: 2 ARGV per rate.
local function parse_limit_window(argv, i, n)
  local p = {}
  for r = 1, n do
    p[r] = { l = num(argv[i]), w = num(argv[i + 1]) }
    i = i + 2
  end
  return p, i
end

-- The latest of at(r) over the rates (0 when none): when a state is back to fresh.
local function latest(p, at)
  local h = 0
  for r = 1, #p do
    h = math.max(h, at(r))
  end
  return h
end

-- Every algorithm registers a table here with:
--   parse(argv, i, n) -> params, next_i      the per-rate parameters from ARGV
--   load(key, params) -> state               state.exists is false for an absent key
--   eval(params, state, now, cost) -> verdicts, next   pure: nothing written
--   commit(key, params, state, next, now, margin)      an admitted check: charge
--   settle(key, params, state, now, margin)            a check not charged (may write)
--   refund(key, params, state, now, amount, margin)    give back `amount` units
local ALG = {}

-- The writers of algorithms whose state is a flat list of numbers in one string value,
-- given pure `settle_state` (or nil), `refund_state` and `horizon` functions.
local function flat_writers(m)
  local function save(key, p, values, now, margin)
    redis.call('SET', key, encode(values), 'PX', ttl_ms(m.horizon(p, values), now, margin))
  end
  m.commit = function(key, p, s, next, now, margin)
    save(key, p, next, now, margin)
  end
  m.settle = function(key, p, s, now, margin)
    if m.settle_state then
      save(key, p, m.settle_state(p, s, now), now, margin)
    end
  end
  m.refund = function(key, p, s, now, amount, margin)
    if s.exists then
      save(key, p, m.refund_state(p, s, now, amount), now, margin)
    end
  end
  m.load = function(key, p)
    local raw = redis.call('GET', key)
    local values = decode(raw)
    return { exists = raw ~= false and #values == m.width * #p, v = values }
  end
end
