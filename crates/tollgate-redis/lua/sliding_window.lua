-- Sliding-window counter (docs/semantics.md, "Sliding-window counter"); mirrors
-- crates/tollgate/src/algorithm/sliding_window.rs.
--
-- Parameters, 2 ARGV per rate: limit L, window W (µs); W <= 2^51 (policy validation).
-- State: one string "window_start_1,prev_1,curr_1,...": absent = fresh.
-- Expires at max(window_start + 2W if curr > 0, window_start + W if prev > 0), rounded up.
-- Exactness: the scaled products (prev * (W - e), room * W) reach L * W, up to ~3 * 10^22 for
-- 10^9 per 365 days, beyond a double's 2^53. They are never formed as doubles: the
-- admission test is the exact comparison prev * (W - e) <= (L - curr - cost) * W (mulcmp),
-- and every quotient goes through muldiv, which is exact. So decisions equal the Rust ones to
-- the unit and the µs.

local sw = { width = 3 }
ALG.sliding_window = sw

sw.parse = parse_limit_window

local function state_of(s, r)
  if s.exists then return s.v[3 * r - 2], s.v[3 * r - 1], s.v[3 * r] end
  return 0, 0, 0
end

-- The state rolled forward to the window containing now (clamped to the state's window).
local function roll(q, sws, sprev, scurr, now)
  local t = math.max(now, sws)
  local ws = t - imod(t, q.w)
  if sws == ws then
    return ws, sprev, scurr
  elseif sws + q.w == ws then
    return ws, scurr, 0
  end
  return ws, 0, 0
end

-- Called on a denial only, where prev * (W - e) > room * W: every quotient is below W.
local function wait(q, prev, curr, e, cost)
  local w = q.w
  if q.l >= curr + cost and prev > 0 then
    local room = q.l - curr - cost
    local e_min = w - math.min(w, muldiv(room, w, prev))
    if e_min < w then return e_min - e end
  end
  if curr == 0 then return w - e end
  -- e2 = w - min(w, floor((L - cost) * w / curr)); the quotient is below w iff L - cost < curr
  local e2 = 0
  if q.l - cost < curr then e2 = w - muldiv(q.l - cost, w, curr) end
  if e2 < w then return (w - e) + e2 end
  return (w - e) + w
end

-- ceil(a * b / c) exactly (a result below 2^53).
local function muldiv_up(a, b, c)
  local q = muldiv(a, b, c)
  if mulcmp(q, c, a, b) < 0 then return q + 1 end
  return q
end

local function reset_after(q, prev, curr, e)
  if curr > 0 then return (q.w - e) + q.w end
  if prev > 0 then return q.w - e end
  return 0
end

function sw.eval(p, s, now, cost)
  local verdicts, next = {}, {}
  for r = 1, #p do
    local q = p[r]
    local sws, sprev, scurr = state_of(s, r)
    local t = math.max(now, sws)
    local ws, prev, curr = roll(q, sws, sprev, scurr, t)
    local w = q.w
    local e = t - ws
    -- allowed iff curr + cost <= L and prev * (w - e) <= (L - curr - cost) * w, exactly.
    local allowed = curr + cost <= q.l and mulcmp(prev, w - e, q.l - curr - cost, w) <= 0
    local after = curr
    if allowed then after = curr + cost end
    local retry = 0
    if not allowed then retry = wait(q, prev, curr, e, cost) end
    -- remaining = max(0, floor((L*w - prev*(w - e) - after*w) / w))
    --           = max(0, L - after - ceil(prev * (w - e) / w))
    local remaining = 0
    if after <= q.l then
      remaining = math.max(0, q.l - after - muldiv_up(prev, w - e, w))
    end
    verdicts[r] = verdict(allowed, q.l, remaining,
      retry, reset_after(q, prev, after, e), reset_after(q, prev, curr, e))
    if allowed then
      next[3 * r - 2], next[3 * r - 1], next[3 * r] = ws, prev, after
    else
      next[3 * r - 2], next[3 * r - 1], next[3 * r] = sws, sprev, scurr
    end
  end
  return verdicts, next
end

sw.settle_state = nil

function sw.refund_state(p, s, now, amount)
  local out = {}
  for r = 1, #p do
    local sws, sprev, scurr = state_of(s, r)
    local ws, prev, curr = roll(p[r], sws, sprev, scurr, now)
    out[3 * r - 2], out[3 * r - 1], out[3 * r] = ws, prev, math.max(0, curr - amount)
  end
  return out
end

function sw.horizon(p, values)
  return latest(p, function(r)
    local ws, prev, curr = values[3 * r - 2], values[3 * r - 1], values[3 * r]
    if curr > 0 then return ws + 2 * p[r].w end
    if prev > 0 then return ws + p[r].w end
    return 0
  end)
end

flat_writers(sw)
