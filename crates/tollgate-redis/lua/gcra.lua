-- GCRA (docs/semantics.md, "GCRA"); mirrors crates/tollgate/src/algorithm/gcra.rs.
--
-- Parameters, 3 ARGV per rate: emission interval T = ceil(period / limit) µs,
-- tolerance tau = T * burst µs, burst.
-- State: one string "tat_1,...,tat_n" (theoretical arrival time of each rate, µs); absent =
-- every tat 0 (fresh). Expires at max(tat) (the horizon), rounded up to the ms.
-- Bounds: cost <= burst (checked by the client), so cost * T <= tau <= 2^52.

local gcra = { width = 1 }
ALG.gcra = gcra

function gcra.parse(argv, i, n)
  local p = {}
  for r = 1, n do
    p[r] = { t = num(argv[i]), tau = num(argv[i + 1]), burst = num(argv[i + 2]) }
    i = i + 3
  end
  return p, i
end

function gcra.eval(p, s, now, cost)
  local verdicts, next = {}, {}
  for r = 1, #p do
    local q = p[r]
    local tat = s.v[r] or 0
    local tat0 = math.max(tat, now)
    local new_tat = tat0 + cost * q.t
    local uncharged = tat0 - now
    if new_tat <= now + q.tau then
      verdicts[r] = verdict(true, q.burst, idiv(now + q.tau - new_tat, q.t), 0,
        new_tat - now, uncharged)
      next[r] = new_tat
    else
      verdicts[r] = verdict(false, q.burst, idiv(math.max(0, now + q.tau - tat0), q.t),
        new_tat - q.tau - now, uncharged, uncharged)
      next[r] = tat
    end
  end
  return verdicts, next
end

-- A check that is not charged writes nothing.
gcra.settle_state = nil

function gcra.refund_state(p, s, now, amount)
  local out = {}
  for r = 1, #p do
    local tat = s.v[r] or 0
    if tat > now then
      -- amount may be huge (any u64): the difference is then negative, clamped to now.
      tat = math.max(now, tat - amount * p[r].t)
    end
    out[r] = tat
  end
  return out
end

function gcra.horizon(p, values)
  return latest(p, function(r) return values[r] end)
end

flat_writers(gcra)
