-- wrk pacing (figure 11 of benchmarks.run): requests at a fixed rate, PACE_RATE per second for all of
-- this wrk's connections together (run wrk with -t1: one Lua state, one schedule). Request i is due
-- at start + i / rate; delay() tells wrk how long a connection waits before sending it (0 when it is
-- already due: a server that fell behind is caught up on, not forgiven).
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } rsmp_pace_timespec;
int clock_gettime(int clock, rsmp_pace_timespec *ts);
]]
local CLOCK_MONOTONIC = 1
local ts = ffi.new("rsmp_pace_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local interval = 1000 / tonumber(os.getenv("PACE_RATE"))
local due = nil

function delay()
  local now = now_ms()
  due = (due or now) + interval
  local wait = due - now
  if wait < 0 then
    return 0
  end
  return wait
end
