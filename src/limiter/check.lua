-- sluice: check one request against every limit of a route and, only if all admit it, count
-- it against all of them; atomically, on Redis TIME.
-- KEYS[i]   the state of limit i (a sorted set, a hash or a string, by algorithm)
-- KEYS[n+1] (only when ARGV[2] > 0) the request id's key: how often that id was retried
-- ARGV[1]   member prefix for this request, unique across instances and requests
-- ARGV[2]   retry window in ms (0: no request id), ARGV[3] max retries, ARGV[4] cost
-- ARGV[4i+1..4i+4]  algorithm (1 sliding_log, 2 sliding_window, 3 gcra), requests,
--                   window (µs), burst of limit i
-- Returns {admitted, used_1, remaining_1, reset_us_1, retry_us_1, used_2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = (#ARGV - 4) / 4
local retry_ms = tonumber(ARGV[2])
local cost = tonumber(ARGV[4])
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min

-- A retry of a request an earlier attempt counted (the same load-balancer request id, within
-- its retry window, within its retry budget) is admitted again without counting it twice.
local replay = false
if retry_ms > 0 then
  local retried = redis.call('GET', KEYS[n + 1])
  if retried and tonumber(retried) < tonumber(ARGV[3]) then
    redis.call('INCR', KEYS[n + 1]) -- keeps the key's expiry: the window runs from the count
    replay = true
  end
end

-- Phase 1: every limit's state now, and whether it admits `cost` more.
local st = {}
local admitted = 1
for i = 1, n do
  local b = 4 * i
  local algo, limit, window = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local key, s = KEYS[i], { algo = algo, limit = limit, window = window }
  if algo == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    s.used = redis.call('ZCARD', key)
    s.ok = s.used + cost <= limit
  elseif algo == 2 then
    local h = redis.call('HMGET', key, 'i', 'c', 'p')
    local idx = floor(now / window)
    local hi, hc, hp = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
    s.idx, s.cur, s.prev = idx, 0, 0
    if hi == idx then
      s.cur, s.prev = hc, hp
    elseif hi == idx - 1 then
      s.prev = hc
    end
    s.f = (now - idx * window) / window
    s.est = s.prev * (1 - s.f) + s.cur
    s.ok = s.est + cost <= limit + 1e-9
  else
    local burst = tonumber(ARGV[b + 4])
    s.T = window / limit
    s.cap = burst * s.T
    s.burst = burst
    s.tat = max(tonumber(redis.call('GET', key)) or now, now)
    s.new = s.tat + cost * s.T
    s.ok = s.new - now <= s.cap + 1e-6
  end
  if not s.ok and not replay then
    admitted = 0
  end
  st[i] = s
end
-- A cost of 0 is a peek (/stats): it reads, it never counts.
local count = admitted == 1 and not replay and cost > 0
if count and retry_ms > 0 then
  -- First counting of this id (a later one, past the retry budget, leaves it as it is).
  redis.call('SET', KEYS[n + 1], 0, 'PX', retry_ms, 'NX')
end

-- Phase 2: count the request (when every limit admits) and report each limit.
local out = { admitted }
for i = 1, n do
  local s, key = st[i], KEYS[i]
  local limit, window = s.limit, s.window
  local used, remaining, reset, retry
  if s.algo == 1 then
    used = s.used
    if count then
      for j = 1, cost do
        redis.call('ZADD', key, now, ARGV[1] .. ':' .. j)
      end
      redis.call('PEXPIRE', key, ceil(window / 1000))
      used = used + cost
    end
    if count and used == cost then
      reset = window -- this request's entries are the only ones
    elseif used > 0 then
      local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      reset = tonumber(oldest[2]) + window - now
    else
      reset = 0
    end
    retry = 0
    if admitted == 0 and not s.ok then
      local k = used + cost - limit -- this many counted requests must leave first
      if k > used then
        retry = window -- the cost exceeds the limit itself
      else
        local nth = redis.call('ZRANGE', key, k - 1, k - 1, 'WITHSCORES')
        retry = tonumber(nth[2]) + window - now
      end
    end
    remaining = limit - used
  elseif s.algo == 2 then
    local cur, est = s.cur, s.est
    if count then
      cur = cur + cost
      est = est + cost
      redis.call('HSET', key, 'i', s.idx, 'c', cur, 'p', s.prev)
      redis.call('PEXPIRE', key, ceil(2 * window / 1000))
    end
    used = ceil(est - 1e-9)
    remaining = max(0, floor(limit - est + 1e-9))
    reset = (s.idx + 1) * window - now
    retry = 0
    if admitted == 0 and not s.ok then
      local room = limit - cost
      if room < 0 then
        retry = window
      elseif cur <= room and s.prev > 0 then
        -- Later in this window: prev * (1 - f') + cur <= room.
        retry = ceil((1 - (room - cur) / s.prev) * window - (now - s.idx * window))
      else
        -- In the next window this one's count becomes the previous: cur * (1 - g) <= room.
        retry = ceil(reset + (cur > 0 and (1 - room / cur) * window or 0))
      end
      retry = max(retry, 1)
    end
  else
    local tat = count and s.new or s.tat
    if count then
      redis.call('SET', key, floor(tat + 0.5), 'PX', max(1, ceil((tat - now) / 1000)))
    end
    remaining = max(0, floor((s.cap - (tat - now)) / s.T + 1e-9))
    used = s.burst - remaining
    reset = ceil(tat - now)
    retry = 0
    if admitted == 0 and not s.ok then
      retry = max(1, ceil(s.new - s.cap - now))
      if cost > s.burst then
        retry = window
      end
    end
  end
  out[#out + 1] = used
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
