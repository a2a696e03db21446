-- Sliding log, several rates over one log (docs/semantics.md, "Sliding log"); mirrors
-- crates/tollgate/src/algorithm/sliding_log.rs.
--
-- Parameters, 2 ARGV per rate: limit L, window W (µs).
-- State: one list "ts_1, weight_1, ts_2, weight_2, ..." (two elements per entry), oldest
-- first, entries at one ts merged; absent = empty log. Expires at newest ts + max W,
-- rounded up to the ms. An admitted check trims the entries no window can see (LTRIM) and
-- appends (RPUSH) or merges (LSET) one entry: it never rewrites the whole log.

local sl = {}
ALG.sliding_log = sl

function sl.parse(argv, i, n)
  local p = { rates = {}, max_w = 0 }
  for r = 1, n do
    local q = { l = num(argv[i]), w = num(argv[i + 1]) }
    p.rates[r] = q
    p.max_w = math.max(p.max_w, q.w)
    i = i + 2
  end
  -- the per-rate list has the same length as for the other algorithms
  for r = 1, n do p[r] = p.rates[r] end
  return p, i
end

function sl.load(key, p)
  local raw = redis.call('LRANGE', key, 0, -1)
  local ts, wt = {}, {}
  for j = 1, #raw, 2 do
    ts[#ts + 1] = num(raw[j])
    wt[#wt + 1] = num(raw[j + 1])
  end
  return { exists = #ts > 0, ts = ts, wt = wt }
end

local function newest(s)
  return s.ts[#s.ts]
end

-- The clamped now: time never runs backwards inside a log.
local function clamp(s, now)
  local n = newest(s)
  if n and n > now then return n end
  return now
end

function sl.eval(p, s, now, cost)
  local t = clamp(s, now)
  local verdicts = {}
  local last = newest(s)
  for r = 1, #p.rates do
    local q = p.rates[r]
    -- the entries inside window r are a suffix of the log: find where it starts
    local first = #s.ts + 1
    local count = 0
    while first > 1 and t - s.ts[first - 1] < q.w do
      first = first - 1
      count = count + s.wt[first]
    end
    local allowed = count + cost <= q.l
    local uncharged = 0
    if last and count > 0 then uncharged = last + q.w - t end
    local retry = 0
    if not allowed then
      local excess = count + cost - q.l
      local sum = 0
      for j = first, #s.ts do
        sum = sum + s.wt[j]
        if sum >= excess then
          retry = s.ts[j] + q.w - t
          break
        end
      end
    end
    local remaining = q.l - count
    local reset = uncharged
    if allowed then
      remaining = remaining - cost
      reset = q.w
    end
    verdicts[r] = verdict(allowed, q.l, remaining, retry, reset, uncharged)
  end
  return verdicts, { now = t, cost = cost }
end

-- Drops (in Redis) the entries that no window can see at t; returns how many remain.
local function prune(key, p, s, t)
  local drop = 0
  while drop < #s.ts and t - s.ts[drop + 1] >= p.max_w do
    drop = drop + 1
  end
  if drop > 0 then
    redis.call('LTRIM', key, 2 * drop, -1)
  end
  return drop
end

function sl.commit(key, p, s, next, now, margin)
  local t = next.now
  prune(key, p, s, t)
  local last = newest(s)
  if last == t and t - last < p.max_w then
    redis.call('LSET', key, -1, str(s.wt[#s.wt] + next.cost))
  else
    redis.call('RPUSH', key, str(t), str(next.cost))
  end
  redis.call('PEXPIRE', key, ttl_ms(t + p.max_w, now, margin))
end

-- A check that is not charged writes nothing.
function sl.settle(key, p, s, now, margin)
end

function sl.refund(key, p, s, now, amount, margin)
  if not s.exists then return end
  local t = clamp(s, now)
  local drop = prune(key, p, s, t)
  local left = amount
  local j = #s.ts
  while left > 0 and j > drop do
    local w = s.wt[j]
    if w > left then
      redis.call('LSET', key, -1, str(w - left))
      left = 0
    else
      redis.call('RPOP', key)
      redis.call('RPOP', key)
      left = left - w
      j = j - 1
    end
  end
  if j > drop then
    redis.call('PEXPIRE', key, ttl_ms(s.ts[j] + p.max_w, now, margin))
  end
end
