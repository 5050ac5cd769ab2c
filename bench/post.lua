-- wrk -s bench/post.lua <url> -- <bodies file> <request path>: POST the bodies (bench/bodies.py
-- writes them; header length > 0: the Open Inference Protocol's binary extension) in turn and
-- print the result as one JSON line. Requests are formatted once, so wrk spends no Lua time per
-- request; no response() is defined, as wrk would then parse every response into Lua.

local requests = {}
local next_index = 0

function init(args)
   local bodies_file, path = args[1], args[2]
   local f = assert(io.open(bodies_file, "rb"))
   for line in f:lines() do
      local header_length, body_length = line:match("^(%d+) (%d+)$")
      if not header_length then error("bad record header in " .. bodies_file) end
      local headers = { ["Content-Type"] = "application/json" }
      if tonumber(header_length) > 0 then
         headers["Content-Type"] = "application/octet-stream"
         headers["Inference-Header-Content-Length"] = header_length
      end
      requests[#requests + 1] = wrk.format("POST", path, headers, f:read(tonumber(body_length)))
   end
   f:close()
   if #requests == 0 then error("no request bodies in " .. bodies_file) end
end

function request()
   next_index = next_index % #requests + 1
   return requests[next_index]
end

function done(summary, latency, _)
   local e = summary.errors
   io.write(string.format(
      '@@WRK_JSON {"duration_us":%d,"requests":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"max":%d,"p50":%d,"p90":%d,"p99":%d}}\n',
      summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
      latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
