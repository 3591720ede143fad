-- sluice: check and count one request against every limit of a route, atomically.
-- KEYS[i]   one sorted set per limit (score = admission time in microseconds, Redis TIME)
-- KEYS[n+1] (only when ARGV[2] > 0) the request id's key: how often that id was retried
-- ARGV[1]   member for this request, unique across instances and requests
-- ARGV[2]   retry window in milliseconds (0: no request id), ARGV[3] max retries
-- ARGV[2i+2], ARGV[2i+3]  requests and window (microseconds) of limit i
-- Returns {admitted, used_1, reset_us_1, retry_us_1, used_2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = (#ARGV - 3) / 2
local retry_ms = tonumber(ARGV[2])
local used = {}
local admitted = 1
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
for i = 1, n do
  local window = tonumber(ARGV[2 * i + 3])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  used[i] = redis.call('ZCARD', KEYS[i])
  if not replay and used[i] >= tonumber(ARGV[2 * i + 2]) then
    admitted = 0
  end
end
local count = admitted == 1 and not replay
if count and retry_ms > 0 then
  -- First counting of this id (a later one, past the retry budget, leaves it as it is).
  redis.call('SET', KEYS[n + 1], 0, 'PX', retry_ms, 'NX')
end
local out = { admitted }
for i = 1, n do
  local requests = tonumber(ARGV[2 * i + 2])
  local window = tonumber(ARGV[2 * i + 3])
  local c = used[i]
  if count then
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], math.ceil(window / 1000))
    c = c + 1
  end
  local reset, retry = 0, 0
  if c == 1 and count then
    reset = window -- this request is the only one counted
  elseif c > 0 then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    reset = tonumber(oldest[2]) + window - now
  end
  if admitted == 0 and c >= requests then
    local nth = redis.call('ZRANGE', KEYS[i], c - requests, c - requests, 'WITHSCORES')
    retry = tonumber(nth[2]) + window - now
  end
  out[#out + 1] = c
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
