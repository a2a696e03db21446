-- Fixed clock-aligned windows (docs/semantics.md, "Fixed window"); mirrors
-- crates/tollgate/src/algorithm/fixed_window.rs.
--
-- Parameters, 2 ARGV per rate: limit L, window W (µs).
-- State: one string "window_start_1,count_1,...,window_start_n,count_n"; absent = fresh.
-- Expires at max(window_start + W), rounded up to the ms.

local fw = { width = 2 }
ALG.fixed_window = fw

fw.parse = parse_limit_window

local function state_of(s, r)
  if s.exists then return s.v[2 * r - 1], s.v[2 * r] end
  return 0, 0
end

function fw.eval(p, s, now, cost)
  local verdicts, next = {}, {}
  for r = 1, #p do
    local q = p[r]
    local sws, scount = state_of(s, r)
    local t = math.max(now, sws)
    local ws = t - imod(t, q.w)
    local count = 0
    if sws == ws then count = scount end
    local until_end = ws + q.w - t
    local allowed = count + cost <= q.l
    local after, retry = count, until_end
    if allowed then after, retry = count + cost, 0 end
    local reset, uncharged = 0, 0
    if after > 0 then reset = until_end end
    if count > 0 then uncharged = until_end end
    verdicts[r] = verdict(allowed, q.l, q.l - after, retry, reset, uncharged)
    next[2 * r - 1], next[2 * r] = ws, after
  end
  return verdicts, next
end

fw.settle_state = nil

function fw.refund_state(p, s, now, amount)
  local out = {}
  for r = 1, #p do
    local sws, scount = state_of(s, r)
    local t = math.max(now, sws)
    local ws = t - imod(t, p[r].w)
    if sws == ws then
      scount = math.max(0, scount - amount)
    end
    out[2 * r - 1], out[2 * r] = sws, scount
  end
  return out
end

function fw.horizon(p, values)
  return latest(p, function(r) return values[2 * r - 1] + p[r].w end)
end

flat_writers(fw)
