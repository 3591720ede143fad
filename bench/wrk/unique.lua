-- wrk: every request a new caller (u<thread>-<n>), for memory against distinct callers.
local n = 0
function setup(thread) thread:set("tid", tostring(math.random(1, 1000000000))) end
request = function()
  n = n + 1
  return wrk.format(nil, (os.getenv("WRK_PATH") or "/api/data") .. "?user_id=u" .. tid .. "-" .. n)
end
