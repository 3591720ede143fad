-- sluice: every store operation of one or more requests, in order, atomically, at one instant.
--
-- The constants above this line (kind and operation codes, argument and reply strides) are
-- generated from the Rust definitions in limiter/layout.rs, which the memory store's engine
-- (limiter/algorithms.rs) shares: the two are run side by side on random traces by
-- tests/engine.rs and must answer alike.
--
-- limiter/layout.rs wraps it as a function library (Redis 7 and later: `FCALL <name>`, the
-- definitions made once, at load) or as a script (EVALSHA, where FUNCTION is missing or not
-- allowed); either way each call runs `main` (at the end) with the call's KEYS and ARGV:
--
-- ARGV[1]  the time in µs, or "0" for Redis TIME (a sidecar always sends "0"; tests send their
--          own clock so the memory store and this script see the same instant)
-- ARGV[2]  the number of operations; then each operation from position p, ARGV[p] its code:
--
-- OP_CHECK   p+1 member (unique per request), p+2 retry window ms (0: no request id; -1: an
--            earlier call already found this request to be a retry), p+3 max retries,
--            p+4 cost (0: a peek, which counts nothing), p+5 n limits, then LIMIT_ARGS values
--            per limit: kind, amount (requests or slots), window µs, burst, window or lease ms
--            (a quota: its period's end µs, start µs, length ms).
--            KEYS: each limit's key, then (retry window > 0) the request id's key.
--            Reply: status (1 admitted, 2 admitted as a retry, 0 refused, -1 failed), then
--            REPLY_PER_LIMIT values per limit: used, remaining, reset µs, retry µs.
-- OP_RELEASE p+1 member, p+2 n. KEYS: n slot keys. Reply: the leases removed.
-- OP_RENEW   p+1 lease µs, p+2 n, then n members. KEYS: each member's slot key. Reply: renewed.
-- OP_ADJUST  p+1 member, p+2 counted cost, p+3 new cost, p+4 when it was counted (µs),
--            p+5 1 when the request id's mark must go too, p+6 n, then LIMIT_ARGS per limit.
--            KEYS: n limit keys (then the id key). Reply: 1. Undoes a count (new cost 0) or
--            settles it at another cost.
--
-- The reply starts with the time used, so a caller can adjust what it counted.

-- Set by `main` for each call (see the end): the call's keys and arguments, the reply being
-- built, and the library functions used (a function library's code is loaded where `redis.call`,
-- `math` and `string` are not there yet). Everything else is defined once: loaded as a Redis
-- function library, the definitions run when the library is loaded, not on every call.
local KEYS, ARGV, out
local call, floor, ceil, max, tonumber, find, sub, format, byte

-- Key expiry only collects what the stored times already say is over (a log's entries, a
-- window's index, a GCRA time, a lease's or an id's deadline: each is read against `now`).
-- Redis expires keys on its own clock, so with a clock given by the caller (tests) keys are
-- kept a minute longer, lest Redis's clock run ahead of the given one.
local now, now_s, slack

-- What the script spends its time on, besides the commands, is converting numbers: Lua reads
-- a number from text with strtod and Redis writes a number argument with printf("%.17g"), each
-- a thousand instructions or more. So arguments the commands take are passed as text where the
-- script has it (`'0'`, ARGV), small numbers are read from their one digit, and whole numbers
-- are written as integers.

-- A whole number (below 2^63) as digits, without floating-point formatting.
local function int(x)
  return format('%d', x)
end

-- A whole number from its digits: one digit (most of what the script is sent: codes, counts, a
-- cost of 1, no retry window) from its byte, longer ones by tonumber, each text once per call
-- (the requests of a batch mostly share their limits' numbers, and Lua strings are interned).
local read
local function num(text)
  if #text == 1 then
    return byte(text) - 48
  end
  local value = read[text]
  if not value then
    value = tonumber(text)
    read[text] = value
  end
  return value
end

-- The fixed window holding `at`: exact for integers below 2^53, whatever float division does.
local function window_index(at, window)
  local i = floor(at / window)
  if i * window > at then
    i = i - 1
  elseif (i + 1) * window <= at then
    i = i + 1
  end
  return i
end

-- Sliding log entries: one member per admission, named by the request and, when it cost more
-- than 1, its cost (`<member>*<cost>`); the member `#` holds minus the units in the log.
local function entry(member, cost)
  if cost == 1 then
    return member
  end
  return member .. '*' .. cost
end

local function entry_cost(name)
  local star = find(name, '*', 1, true)
  if star then
    return tonumber(sub(name, star + 1))
  end
  return 1
end

-- The units in the log, its oldest entry's time, the index of that entry, and whether the log
-- is weighted. A log whose entries all cost 1 (most) counts its entries; one that ever held a
-- costlier entry keeps its total, negated, as the score of the member `#` (first by score).
local function log_head(key)
  local head = call('ZRANGE', key, '0', '0', 'WITHSCORES')
  if head[1] == '#' then
    local oldest = call('ZRANGE', key, '1', '1', 'WITHSCORES')[2]
    return -tonumber(head[2]), tonumber(oldest), 1, true
  end
  if head[1] then
    return call('ZCARD', key), tonumber(head[2]), 0, false
  end
  return 0, nil, 0, false
end

-- Keeps a weighted log's total (an empty log is deleted whole).
local function log_store_total(key, total, weighted)
  if total <= 0 then
    call('DEL', key)
  elseif weighted then
    call('ZADD', key, int(-total), '#')
  end
end

-- A limit's fourth argument: a GCRA's burst, a quota's period start.
local function burst(s)
  return num(ARGV[s.b + 3])
end

-- Its fifth: a window or a lease in ms, a quota's instant in µs.
local function ms(s)
  return num(ARGV[s.b + 4])
end

-- A window or lease in ms as the expiry text PEXPIRE takes (ARGV itself on Redis's clock).
local function ttl(s)
  if slack == 0 then
    return ARGV[s.b + 4]
  end
  return int(ms(s) + slack)
end

-- One entry per kind, each a function of the phase: LOOK (has the limit room for `cost`?),
-- COUNT (count it: every limit of the request had room), REPORT (used, remaining, reset, retry)
-- and ADJUST (replace what a request counted by another cost; 0 undoes it). One closure per
-- kind keeps what the script builds on every call small.
local LOOK, COUNT, REPORT, ADJUST = 1, 2, 3, 4
local KINDS = {}

KINDS[KIND_LOG] = function(phase, s, x, y, z, w)
  if phase == LOOK then
    local cost = x
    local key, window = s.key, s.window
    local total, oldest, first, weighted = log_head(key)
    if oldest and oldest <= now - window then
      if weighted then
        local gone = call('ZRANGEBYSCORE', key, '(0', int(now - window))
        for j = 1, #gone do
          total = total - entry_cost(gone[j])
        end
        call('ZREMRANGEBYSCORE', key, '(0', int(now - window))
        log_store_total(key, total, weighted)
      else
        call('ZREMRANGEBYSCORE', key, '(0', int(now - window))
      end
      total, oldest, first, weighted = log_head(key)
    end
    s.used, s.oldest, s.first, s.weighted = total, oldest, first, weighted
    s.ok = total + cost <= s.amount
  elseif phase == COUNT then
    local member, cost = x, y
    s.used = s.used + cost
    if s.weighted or cost > 1 then
      call('ZADD', s.key, now_s, entry(member, cost), int(-s.used), '#')
    else
      call('ZADD', s.key, now_s, member)
    end
    call('PEXPIRE', s.key, ttl(s))
    s.oldest = s.oldest or now
  elseif phase == REPORT then
    local cost, refused = x, y
    local used, window = s.used, s.window
    local retry = 0
    if refused and not s.ok then
      local k = used + cost - s.amount -- this many counted units must leave first
      if k > used then
        retry = window -- the cost exceeds the limit itself
      else
        -- Walk from the oldest entry until k units have left. Every entry is at least one
        -- unit, so the next `need` entries (at most 128 at a time) are enough to look at.
        local i, need = s.first, k
        while need > 0 do
          local take = math.min(need, 128)
          local chunk = call('ZRANGE', s.key, int(i), int(i + take - 1), 'WITHSCORES')
          if #chunk == 0 then
            retry = window
            break
          end
          for j = 1, #chunk, 2 do
            need = need - entry_cost(chunk[j])
            if need <= 0 then
              retry = tonumber(chunk[j + 1]) + window - now
              break
            end
          end
          i = i + take
        end
      end
    end
    local reset = 0
    if used > 0 then
      reset = (s.oldest or now) + window - now
    end
    return used, s.amount - used, reset, retry
  else -- ADJUST
    local member, counted, cost, at = x, y, z, w
    if at <= now - s.window then
      return -- it has left the window: it counts nothing any more
    end
    local name = entry(member, counted)
    if not call('ZSCORE', s.key, name) then
      return
    end
    local total, _, _, weighted = log_head(s.key)
    call('ZREM', s.key, name)
    if cost > 0 then
      call('ZADD', s.key, int(at), entry(member, cost))
    end
    log_store_total(s.key, total - counted + cost, weighted or cost > 1)
  end
end

KINDS[KIND_WINDOW] = function(phase, s, x, y, z, w)
  if phase == LOOK then
    local cost = x
    local h = call('HMGET', s.key, 'i', 'c', 'p')
    local window = s.window
    local idx = window_index(now, window)
    local hi, hc, hp = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0
    s.idx, s.cur, s.prev = idx, 0, 0
    if hi == idx then
      s.cur, s.prev = hc, hp
    elseif hi == idx - 1 then
      s.prev = hc
    end
    s.est = s.prev * (1 - (now - idx * window) / window) + s.cur
    s.ok = s.est + cost <= s.amount + 1e-9
  elseif phase == COUNT then
    local member, cost = x, y
    s.cur = s.cur + cost
    s.est = s.est + cost
    call('HSET', s.key, 'i', int(s.idx), 'c', int(s.cur), 'p', int(s.prev))
    call('PEXPIRE', s.key, int(ceil(2 * s.window / 1000) + slack))
  elseif phase == REPORT then
    local cost, refused = x, y
    local limit, window, cur, est = s.amount, s.window, s.cur, s.est
    local reset = (s.idx + 1) * window - now
    local retry = 0
    if refused and not s.ok then
      local room = limit - cost
      if room < 0 then
        retry = window
      elseif cur <= room and s.prev > 0 then
        -- Later in this window: prev * (1 - f') + cur <= room.
        retry = ceil((1 - (room - cur) / s.prev) * window - (now - s.idx * window))
      else
        -- In the next window this one's count becomes the previous: cur * (1 - g) <= room.
        local share = 0
        if cur > 0 then
          share = (1 - room / cur) * window
        end
        retry = ceil(reset + share)
      end
      retry = max(retry, 1)
    end
    return ceil(est - 1e-9), max(0, floor(limit - est + 1e-9)), reset, retry
  else -- ADJUST
    local member, counted, cost, at = x, y, z, w
    local idx = window_index(at, s.window)
    local h = call('HMGET', s.key, 'i', 'c', 'p')
    local hi = tonumber(h[1])
    if hi == idx then
      call('HSET', s.key, 'c', int(max(0, (tonumber(h[2]) or 0) - counted + cost)))
    elseif hi == idx + 1 then
      call('HSET', s.key, 'p', int(max(0, (tonumber(h[3]) or 0) - counted + cost)))
    end
  end
end

KINDS[KIND_GCRA] = function(phase, s, x, y, z, w)
  if phase == LOOK then
    local cost = x
    s.T = s.window / s.amount
    s.burst = burst(s)
    s.cap = s.burst * s.T
    s.tat = max(tonumber(call('GET', s.key)) or now, now)
    s.new = s.tat + cost * s.T
    s.ok = s.new - now <= s.cap + 1e-6
  elseif phase == COUNT then
    local member, cost = x, y
    s.tat = s.new
    call('SET', s.key, int(floor(s.tat + 0.5)), 'PX', int(max(1, ceil((s.tat - now) / 1000)) + slack))
  elseif phase == REPORT then
    local cost, refused = x, y
    local ahead = s.tat - now
    local remaining = max(0, floor((s.cap - ahead) / s.T + 1e-9))
    local retry = 0
    if refused and not s.ok then
      if cost > s.burst then
        retry = s.window
      else
        retry = max(1, ceil(s.new - s.cap - now))
      end
    end
    return s.burst - remaining, remaining, ceil(ahead), retry
  else -- ADJUST
    local member, counted, cost, at = x, y, z, w
    local tat = tonumber(call('GET', s.key))
    if not tat or tat <= now then
      return -- nothing owed any more
    end
    tat = floor(tat + (cost - counted) * s.window / s.amount + 0.5)
    if tat <= now then
      call('DEL', s.key)
    else
      call('SET', s.key, int(tat), 'PX', int(max(1, ceil((tat - now) / 1000)) + slack))
    end
  end
end

-- In-flight requests: one lease per request, the member's score its expiry.
KINDS[KIND_SLOTS] = function(phase, s, x, y, z, w)
  if phase == LOOK then
    local cost = x
    call('ZREMRANGEBYSCORE', s.key, '-inf', now_s)
    s.used = call('ZCARD', s.key)
    s.ok = s.used + 1 <= s.amount
  elseif phase == COUNT then
    local member, cost = x, y
    call('ZADD', s.key, int(now + ms(s) * 1000), member)
    call('PEXPIRE', s.key, ttl(s))
    s.used = s.used + 1
  elseif phase == REPORT then
    local cost, refused = x, y
    local retry = 0
    if refused and not s.ok then
      retry = SLOT_RETRY_US
    end
    return s.used, max(0, s.amount - s.used), 0, retry
  else -- ADJUST
    local member, counted, cost, at = x, y, z, w
    if cost == 0 then
      call('ZREM', s.key, member)
    end
  end
end

-- A calendar quota: one counter per period, on the caller's clock. The caller finds the period
-- (a time zone's calendar is not the script's to know) and sends its end as `window`, its start
-- as `burst` and the instant it found them for as `ms`; the reset and the key's expiry count
-- from that instant, so a quota is on one clock throughout. The hash keeps the period's start
-- `p`, end `e` and count `c`. A period never goes back: a sidecar whose clock is behind,
-- sending the period that just ended, counts in the one the hash already holds.
KINDS[KIND_QUOTA] = function(phase, s, x, y, z, w)
  if phase == LOOK then
    local cost = x
    local h = call('HMGET', s.key, 'p', 'e', 'c')
    local hp = tonumber(h[1])
    s.ms = ms(s)
    s.start, s.stop, s.used = burst(s), s.window, 0
    if hp and hp >= s.start then
      s.start, s.stop, s.used = hp, tonumber(h[2]) or s.window, tonumber(h[3]) or 0
    end
    s.ok = s.used + cost <= s.amount
  elseif phase == COUNT then
    local member, cost = x, y
    s.used = s.used + cost
    call('HSET', s.key, 'p', int(s.start), 'e', int(s.stop), 'c', int(s.used))
    call('PEXPIRE', s.key, int(max(1, ceil((s.stop - s.ms) / 1000)) + slack))
  elseif phase == REPORT then
    local cost, refused = x, y
    local reset = max(0, s.stop - s.ms)
    local retry = 0
    if refused and not s.ok then
      retry = max(1, reset)
    end
    return s.used, max(0, s.amount - s.used), reset, retry
  else -- ADJUST
    -- Only in the period it was counted in (the caller sends the period of `at`).
    local counted, cost = y, z
    local h = call('HMGET', s.key, 'p', 'c')
    if tonumber(h[1]) == burst(s) then
      call('HSET', s.key, 'c', int(max(0, (tonumber(h[2]) or 0) - counted + cost)))
    end
  end
end

-- A limit's state for one operation: what every kind reads, and where its arguments are (`b`)
-- for the two only some kinds read (see `burst` and `ms`); each kind's LOOK sets the rest.
-- Operations run one at a time, so the i-th limit of each reuses one table (across calls too,
-- in a function library): a table made per limit and request, with the garbage collection it
-- fed, cost Redis 8k instructions a decision, as much as two of the commands it runs.
local states = {}
local function limit_at(i, b, key)
  local s = states[i]
  if not s then
    s = { code = 0, amount = 0, window = 0, b = 0, key = '', used = 0, oldest = false, first = 0, weighted = false, ok = false }
    states[i] = s
  end
  s.code, s.amount, s.window, s.b, s.key = num(ARGV[b]), num(ARGV[b + 1]), num(ARGV[b + 2]), b, key
  return s
end

-- OP_CHECK: every limit's state, then all or nothing.
local function check(a, k)
  local member, retry_ms = ARGV[a + 1], num(ARGV[a + 2])
  local cost, n = num(ARGV[a + 4]), num(ARGV[a + 5])
  local rates_ok, slots_ok, id_retried = true, true, nil
  for i = 1, n do
    local s = limit_at(i, a + 6 + LIMIT_ARGS * (i - 1), KEYS[k + i - 1])
    KINDS[s.code](LOOK, s, cost)
    if not s.ok then
      if s.code == KIND_SLOTS then
        slots_ok = false
      else
        rates_ok = false
      end
    end
  end

  -- A retry of a request an earlier attempt counted (the same load-balancer request id, within
  -- its retry window and budget) passes the rate limits without being counted twice; it still
  -- needs a free slot, being in flight again. The id's key holds `<retries>:<until µs>`: one
  -- SET NX marks a first-seen id (most are), the key's own expiry clears it, and the script's
  -- clock decides when it has run out. The mark is taken back when this request is refused.
  local replay, marked, id_key, id_until = retry_ms < 0, false, KEYS[k + n], nil
  if retry_ms > 0 and cost > 0 then
    id_until = now + retry_ms * 1000
    if call('SET', id_key, '0:' .. int(id_until), 'PX', int(retry_ms + slack), 'NX') then
      marked = true
    else
      local v = call('GET', id_key) or ''
      local colon = find(v, ':', 1, true)
      local retried, until_us = tonumber(sub(v, 1, (colon or 1) - 1)), tonumber(sub(v, (colon or #v) + 1))
      if retried and until_us and until_us > now then
        replay = retried < tonumber(ARGV[a + 3])
        id_until = until_us
        if replay then
          id_retried = retried + 1
        end
      else
        call('SET', id_key, '0:' .. int(id_until), 'PX', int(retry_ms + slack))
        marked = true
      end
    end
  end
  -- A peek (cost 0) counts nothing and refuses nothing: it reports.
  local admitted = cost == 0 or (slots_ok and (rates_ok or replay))
  if id_retried and admitted then
    -- The id's window runs from its first count: the key keeps its deadline.
    call('SET', id_key, int(id_retried) .. ':' .. int(id_until), 'PX', int(max(1, ceil((id_until - now) / 1000)) + slack))
  end
  if marked and not admitted then
    call('DEL', id_key) -- refused: its retry must be decided afresh, not replayed
  end

  if not admitted then
    out[#out + 1] = 0
  elseif replay then
    out[#out + 1] = 2
  else
    out[#out + 1] = 1
  end
  for i = 1, n do
    local s = states[i]
    local kind = KINDS[s.code]
    if admitted and cost > 0 and (s.code == KIND_SLOTS or not replay) then
      kind(COUNT, s, member, cost)
    end
    local used, remaining, reset, retry = kind(REPORT, s, cost, not admitted)
    out[#out + 1] = used
    out[#out + 1] = remaining
    out[#out + 1] = reset
    out[#out + 1] = retry
  end
end

local function release(a, k)
  local member, n, removed = ARGV[a + 1], tonumber(ARGV[a + 2]), 0
  for i = 1, n do
    removed = removed + call('ZREM', KEYS[k + i - 1], member)
  end
  out[#out + 1] = removed
end

local function renew(a, k)
  local until_s, n, renewed = now + tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), 0
  local ms = ceil(tonumber(ARGV[a + 1]) / 1000)
  for i = 1, n do
    -- Only a lease still running: one that ran out has freed its slot for someone else.
    local key, member = KEYS[k + i - 1], ARGV[a + 2 + i]
    local expiry = tonumber(call('ZSCORE', key, member))
    if expiry and expiry > now then
      call('ZADD', key, int(until_s), member)
      call('PEXPIRE', key, int(ms + slack))
      renewed = renewed + 1
    end
  end
  out[#out + 1] = renewed
end

local function adjust(a, k)
  local member, counted, cost = ARGV[a + 1], tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local at, drop_id, n = tonumber(ARGV[a + 4]), ARGV[a + 5] == '1', tonumber(ARGV[a + 6])
  for i = 1, n do
    local s = limit_at(i, a + 7 + LIMIT_ARGS * (i - 1), KEYS[k + i - 1])
    KINDS[s.code](ADJUST, s, member, counted, cost, at)
  end
  if drop_id then
    call('DEL', KEYS[k + n])
  end
  out[#out + 1] = 1
end

local RUN = { [OP_CHECK] = check, [OP_RELEASE] = release, [OP_RENEW] = renew, [OP_ADJUST] = adjust }

-- One call: every operation in order. Each operation's place in ARGV and KEYS comes from its
-- layout (generated, see the header): { fixed arguments, where its count n is, arguments per
-- item, where the flag for one more key is (0: none), reply values per item when it fails }.
-- An operation that fails (a key holding another type, written by something else) fails alone:
-- its reply is -1 then zeros, and the rest of the call is done as usual.
local function main(call_keys, call_args)
  KEYS, ARGV, read = call_keys, call_args, {}
  call, floor, ceil, max = redis.call, math.floor, math.ceil, math.max
  tonumber, find, sub, format, byte = _G.tonumber, string.find, string.sub, string.format, string.byte
  if ARGV[1] ~= '0' then
    now, now_s, slack = tonumber(ARGV[1]), ARGV[1], 60000
  else
    slack = 0
    local t = call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    -- The same instant as a decimal string (µs zero-padded), so ZADD gets it unformatted.
    now_s = t[1] .. sub('000000', #t[2] + 1) .. t[2]
  end
  out = { now }
  local a, k = 3, 1
  for _ = 1, num(ARGV[2]) do
    local code = num(ARGV[a])
    local layout = OP_LAYOUT[code]
    local n = num(ARGV[a + layout[2]])
    local keys = n
    if layout[4] > 0 and num(ARGV[a + layout[4]]) > 0 then
      keys = n + 1
    end
    local mark = #out
    local ok, err = pcall(RUN[code], a, k)
    if not ok then
      redis.log(redis.LOG_WARNING, 'sluice: an operation failed: ' .. tostring(err and err.err or err))
      for i = #out, mark + 1, -1 do
        out[i] = nil
      end
      out[#out + 1] = -1
      for _ = 1, layout[5] * n do
        out[#out + 1] = 0
      end
    end
    k = k + keys
    a = a + layout[1] + layout[3] * n
  end
  return out
end
