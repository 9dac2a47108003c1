-- wrk: counts the responses by body (a worker's pid, bench/apps/pid.ru)
-- and prints "pid count" lines at the end.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  counts = {}
end

function response(status, headers, body)
  counts[body] = (counts[body] or 0) + 1
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for pid, n in pairs(thread:get("counts")) do
      total[pid] = (total[pid] or 0) + n
    end
  end
  for pid, n in pairs(total) do
    io.write(string.format("pid %s %d\n", pid, n))
  end
end
