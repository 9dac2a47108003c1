# frozen_string_literal: true

# Answers with the pid of the process that served the request: which
# cluster worker a connection landed on. `?ms=N` waits N ms first (an app
# waiting on a database): then a worker's fixed threads, not the CPU, bound
# what it serves.
run lambda { |env|
  ms = env["QUERY_STRING"][/\bms=(\d+)/, 1]
  sleep(Integer(ms) / 1000.0) if ms
  [200, { "content-type" => "text/plain" }, [Process.pid.to_s]]
}
