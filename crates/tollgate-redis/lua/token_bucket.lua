-- Token bucket with interval refill (docs/semantics.md, "Token bucket"); mirrors
-- crates/tollgate/src/algorithm/token_bucket.rs.
--
-- Parameters, 4 ARGV per rate: capacity C (the burst), refill amount R (the limit),
-- refill interval I (the period, µs), initial tokens T0.
-- State: one string "tokens_1,last_1,...,tokens_n,last_n" (`last` = time of the last refill
-- tick, µs); absent = no bucket yet (created with T0 tokens by its first check, allowed or
-- denied). Expires at the horizon max(last + ceil((C - tokens) / R) * I), rounded up.
-- Bounds: R <= I (at most one unit per µs), so the refill k * R <= now - last < 2^53.

local tb = { width = 2 }
ALG.token_bucket = tb

function tb.parse(argv, i, n)
  local p = {}
  for r = 1, n do
    p[r] = { c = num(argv[i]), r = num(argv[i + 1]), i = num(argv[i + 2]),
             t0 = num(argv[i + 3]) }
    i = i + 4
  end
  return p, i
end

-- The bucket of rate r refilled up to now: tokens, last, and the clamped now.
local function refill(q, s, r, now)
  local tokens, last
  if s.exists then
    tokens, last = s.v[2 * r - 1], s.v[2 * r]
    now = math.max(now, last)
    if now > last then
      local k = idiv(now - last, q.i)
      tokens = tokens + k * q.r
      last = last + k * q.i
    end
  else
    tokens, last = q.t0, now
  end
  if tokens >= q.c then
    tokens = q.c
    last = now
  end
  return tokens, last, now
end

local function until_full(q, tokens, last, now)
  if tokens >= q.c then return 0 end
  return math.max(0, last + ceil_div(q.c - tokens, q.r) * q.i - now)
end

function tb.eval(p, s, now, cost)
  local verdicts, next = {}, {}
  for r = 1, #p do
    local q = p[r]
    local tokens, last, t = refill(q, s, r, now)
    local uncharged = until_full(q, tokens, last, t)
    if cost <= tokens then
      local after = tokens - cost
      verdicts[r] = verdict(true, q.c, after, 0, until_full(q, after, last, t), uncharged)
      next[2 * r - 1], next[2 * r] = after, last
    else
      local ticks = ceil_div(cost - tokens, q.r)
      verdicts[r] = verdict(false, q.c, tokens, last + ticks * q.i - t, uncharged, uncharged)
      next[2 * r - 1], next[2 * r] = tokens, last
    end
  end
  return verdicts, next
end

-- A check that is not charged persists the refill (creating the bucket, charging nothing).
function tb.settle_state(p, s, now)
  local out = {}
  for r = 1, #p do
    out[2 * r - 1], out[2 * r] = refill(p[r], s, r, now)
  end
  return out
end

function tb.refund_state(p, s, now, amount)
  local out = {}
  for r = 1, #p do
    local tokens, last = refill(p[r], s, r, now)
    out[2 * r - 1], out[2 * r] = math.min(p[r].c, tokens + amount), last
  end
  return out
end

function tb.horizon(p, values)
  return latest(p, function(r)
    local q, tokens, last = p[r], values[2 * r - 1], values[2 * r]
    if tokens < q.c then return last + ceil_div(q.c - tokens, q.r) * q.i end
    return last
  end)
end

flat_writers(tb)
