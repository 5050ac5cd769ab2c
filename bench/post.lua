-- wrk script: POST prepared JSON bodies in turn, report results as one JSON line.
--
-- Usage: wrk -s bench/post.lua <url> -- <bodies file> <request path>
-- The bodies file holds one JSON document per line. Requests are formatted once in init() and
-- only looked up in request(), so wrk spends no Lua time building them (see wrk's SCRIPTING).
-- No response() function is defined: wrk would otherwise parse every response into Lua.

local requests = {}
local next_index = 0
local threads_set_up = 0

function setup(thread)
   -- Runs once per thread before init(); gives each thread its own start offset below.
   thread:set("thread_index", threads_set_up)
   threads_set_up = threads_set_up + 1
end

function init(args)
   local bodies_file, path = args[1], args[2]
   local headers = { ["Content-Type"] = "application/json" }
   for line in io.lines(bodies_file) do
      if #line > 0 then
         requests[#requests + 1] = wrk.format("POST", path, headers, line)
      end
   end
   if #requests == 0 then
      error("no request bodies in " .. bodies_file)
   end
   -- Threads start at different offsets so they do not send the same body in lockstep.
   next_index = ((thread_index or 0) * 97) % #requests
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      '@@WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
      '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max, latency.stdev,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
