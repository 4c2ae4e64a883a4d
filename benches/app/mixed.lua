-- wrk script: 1 request in 20 goes to /slow/?ms=50 (a 50 ms request), the rest to / (fast).
-- Each wrk thread counts on its own, so the mix holds per thread. `done` prints how many were sent.
local counter = 0
local slow_path = os.getenv("SLOW_PATH") or "/slow/?ms=50"
local every = tonumber(os.getenv("SLOW_EVERY") or "20")

request = function()
  counter = counter + 1
  if counter % every == 0 then
    return wrk.format("GET", slow_path)
  end
  return wrk.format("GET", "/")
end

done = function(summary, latency, requests)
  io.write(string.format("mixed: requests %d, non-2xx/3xx %d, socket errors %d\n",
    summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
