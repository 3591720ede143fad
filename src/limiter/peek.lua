-- sluice: read the usage of every limit of a route without counting or changing anything.
-- KEYS[i] one sorted set per limit; ARGV[i] its window in microseconds.
-- Returns {used_1, reset_us_1, used_2, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
for i = 1, #KEYS do
  local window = tonumber(ARGV[i])
  local from = '(' .. string.format('%.0f', now - window)
  local used = redis.call('ZCOUNT', KEYS[i], from, '+inf')
  local reset = 0
  if used > 0 then
    local oldest = redis.call('ZRANGEBYSCORE', KEYS[i], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    reset = tonumber(oldest[2]) + window - now
  end
  out[#out + 1] = used
  out[#out + 1] = reset
end
return out
