-- wrk: GET random tiles from a list of paths, with a bearer token when BENCH_TOKEN is set
-- (from the environment, so the token is not on any command line).
--   BENCH_TOKEN=... wrk -t2 -c32 -d15s -s benchmarks/random_tiles.lua https://HOST:PORT -- PATHS
-- Each thread draws its own reproducible sequence (seeded by its number). At the end one line
-- "RESULT {json}" gives the counts and latency percentiles for benchmarks/bench_secure_path.py.

local paths = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
end

function init(args)
  for line in io.lines(args[1]) do
    if line ~= "" then
      paths[#paths + 1] = line
    end
  end
  local token = os.getenv("BENCH_TOKEN")
  if token ~= nil and token ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. token
  end
  math.randomseed(id or 1)
end

function request()
  return wrk.format("GET", paths[math.random(#paths)])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    latency.max))
end
