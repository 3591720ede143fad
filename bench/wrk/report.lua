-- wrk reporter: writes the run's figures as JSON to $WRK_OUT when wrk finishes.
-- With $USERS > 0 every request names one of that many users at random (?user_id=uN).
-- With $STATUSES set, it also counts the responses by status ("statuses":{"502":n,...}); that
-- makes wrk parse every response in Lua, so benchmarks leave it unset.
local users = tonumber(os.getenv("USERS") or "0")
local path = os.getenv("WRK_PATH") or "/api/data"
local threads = {}

-- With $HEADERS_FILE, every request instead carries one line of that file, at random, as a
-- header ("authorization: Bearer ..."): one caller per line.
local headers_file = os.getenv("HEADERS_FILE")
if headers_file then
  local lines = {}
  for line in io.lines(headers_file) do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    table.insert(lines, { [name] = value })
  end
  local requests = {}
  init = function(args)
    for i, h in ipairs(lines) do
      -- With $USERS too, line i is sent by user u<i> (names the caller by the query).
      local target = path
      if users > 0 then
        target = path .. "?user_id=u" .. ((i - 1) % users + 1)
      end
      requests[i] = wrk.format(nil, target, h)
    end
  end
  request = function()
    return requests[math.random(#requests)]
  end
elseif users > 0 then
  request = function()
    return wrk.format(nil, path .. "?user_id=u" .. math.random(users))
  end
end

setup = function(thread)
  table.insert(threads, thread)
end

if os.getenv("STATUSES") then
  counts = {}
  response = function(status, headers, body)
    counts[status] = (counts[status] or 0) + 1
  end
end

local function statuses()
  local total = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts") or {}) do
      total[status] = (total[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(total) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  table.sort(parts)
  return "{" .. table.concat(parts, ",") .. "}"
end

done = function(summary, latency, requests)
  local out = assert(io.open(os.getenv("WRK_OUT"), "w"))
  local e = summary.errors
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"rps":%.1f,"non2xx":%d,"socket_errors":%d,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f,"statuses":%s}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000, statuses()))
  out:close()
end
