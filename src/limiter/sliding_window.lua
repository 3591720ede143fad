-- sluice: check and count one request against every limit of a route, atomically.
-- KEYS[i]   one sorted set per limit (score = admission time in microseconds, Redis TIME)
-- ARGV[1]   member for this request, unique across instances and requests (or a request id)
-- ARGV[2i], ARGV[2i+1]  requests and window (microseconds) of limit i
-- Returns {admitted, used_1, reset_us_1, retry_us_1, used_2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local used = {}
local admitted = 1
-- A retried request (same member: a request id from the load balancer) that an earlier
-- attempt already counted is admitted again without counting it twice.
-- Generated members are never repeated, so only request ids ("r:...") need the lookup.
local replay = n > 0 and string.sub(ARGV[1], 1, 2) == 'r:' and redis.call('ZSCORE', KEYS[1], ARGV[1])
for i = 1, n do
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  used[i] = redis.call('ZCARD', KEYS[i])
  if not replay and used[i] >= tonumber(ARGV[2 * i]) then
    admitted = 0
  end
end
local out = { admitted }
for i = 1, n do
  local requests = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  local c = used[i]
  if admitted == 1 and not replay then
    redis.call('ZADD', KEYS[i], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[i], math.ceil(window / 1000))
    c = c + 1
  end
  local reset, retry = 0, 0
  if c == 1 and admitted == 1 and not replay then
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
