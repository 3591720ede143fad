-- sluice: decide one or more requests in order, atomically, on Redis TIME. For each: check it
-- against every limit of its route and, only if all admit it, count it against all of them.
-- Decisions run one after another, so a batch decides exactly what the same calls one by one
-- would (at one instant: the batch's TIME).
--
-- ARGV[1]   D, the number of decisions; then for each decision, from position p:
-- ARGV[p]   member prefix for this request, unique across instances and requests
-- ARGV[p+1] retry window in ms (0: no request id), ARGV[p+2] max retries, ARGV[p+3] cost
-- ARGV[p+4] n, its number of limits; then for each limit five values: algorithm (1 sliding_log,
--           2 sliding_window, 3 gcra), requests, window (µs), burst, window (ms, rounded up)
-- KEYS      for each decision in turn: the state of each of its n limits (a sorted set, a hash
--           or a string, by algorithm), then (only when its retry window > 0) the request id's
--           key: how often that id was retried
-- Returns, for each decision in turn: admitted (1 or 0; -1 when the decision failed), then
-- used, remaining, reset_us, retry_us of each of its limits.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
-- The same instant as a decimal string (µs zero-padded), made when a ZADD first needs it, so
-- that ZADD gets its score without a number being formatted.
local now_s
local floor, ceil, max = math.floor, math.ceil, math.max
local tonumber = tonumber
local out = {}

-- Decides one request; a is its first ARGV index, k its first KEYS index.
local function decide(a, k)
  local retry_ms = tonumber(ARGV[a + 1])
  local cost = tonumber(ARGV[a + 3])
  local n = tonumber(ARGV[a + 4])
  local id_key = KEYS[k + n]

  -- A retry of a request an earlier attempt counted (the same load-balancer request id, within
  -- its retry window, within its retry budget) is admitted again without counting it twice.
  -- One call marks the id as counted (only when unmarked) and says whether it was: most ids are
  -- seen once, and the mark is taken back below when this request is not counted after all.
  local replay, marked = false, false
  if retry_ms > 0 then
    if redis.call('SET', id_key, 0, 'PX', retry_ms, 'NX') then
      marked = true
    else
      local retried = redis.call('GET', id_key)
      if retried and tonumber(retried) < tonumber(ARGV[a + 2]) then
        redis.call('INCR', id_key) -- keeps the key's expiry: the window runs from the count
        replay = true
      end
    end
  end

  -- Phase 1: every limit's state now, and whether it admits `cost` more.
  local st = {}
  local admitted = 1
  for i = 1, n do
    local b = a + 5 * i
    local algo, limit, window = tonumber(ARGV[b]), tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
    local key, s = KEYS[k + i - 1], { algo = algo, limit = limit, window = window }
    if algo == 1 then
      -- The oldest entry first: only when it has left the window is there anything to remove
      -- (entries leave oldest first), and it is the limit's reset time either way.
      local oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
      if oldest and oldest <= now - window then
        redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
        oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
      end
      s.oldest = oldest
      s.used = oldest and redis.call('ZCARD', key) or 0
      s.ok = s.used + cost <= limit
      s.ms = ARGV[b + 4]
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
      local burst = tonumber(ARGV[b + 3])
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
  if marked and not count then
    -- Refused: its retry must be decided afresh, not replayed.
    redis.call('DEL', id_key)
  end

  -- Phase 2: count the request (when every limit admits) and report each limit.
  out[#out + 1] = admitted
  for i = 1, n do
    local s, key = st[i], KEYS[k + i - 1]
    local limit, window = s.limit, s.window
    local used, remaining, reset, retry
    if s.algo == 1 then
      used = s.used
      if count then
        local member = ARGV[a] .. ':'
        now_s = now_s or t[1] .. string.sub('000000', #t[2] + 1) .. t[2]
        for j = 1, cost do
          redis.call('ZADD', key, now_s, member .. j)
        end
        redis.call('PEXPIRE', key, s.ms)
        used = used + cost
      end
      -- Until the oldest entry leaves (this request's own, when it is the only one).
      reset = used > 0 and (s.oldest or now) + window - now or 0
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
end

-- A decision that fails (a key holding another type, written by something else) fails alone:
-- it is reported as admitted = -1 and the rest of the batch is decided as usual.
local a, k = 2, 1
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a + 4])
  local mark = #out
  local ok, err = pcall(decide, a, k)
  if not ok then
    redis.log(redis.LOG_WARNING, 'sluice: a decision failed: ' .. tostring(err and err.err or err))
    for i = #out, mark + 1, -1 do
      out[i] = nil
    end
    out[#out + 1] = -1
    for _ = 1, 4 * n do
      out[#out + 1] = 0
    end
  end
  k = k + n + (tonumber(ARGV[a + 1]) > 0 and 1 or 0)
  a = a + 5 + 5 * n
end
return out
