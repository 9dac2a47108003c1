# frozen_string_literal: true

# Helpers for specs that start a cluster: worker pids from the master's log,
# and waits on real conditions with deadlines.
module ClusterHelpers
  WORKER_READY = /\* worker (\d+) \(pid (\d+)\) ready/

  def start_cluster(*args, rackup: ServerHelpers::APP, workers: 2, **kwargs)
    server = start_butterflies("-w", workers.to_s, "-t", "2", "--io-threads", "1", *args, rackup: rackup, **kwargs)
    wait_for_ready_workers(server, workers)
    server
  end

  # { index => pid } of the workers that reported ready, latest per index.
  def ready_workers(server)
    server.output.scan(WORKER_READY).to_h { |index, pid| [index.to_i, pid.to_i] }
  end

  def wait_for_ready_workers(server, count, timeout: 30)
    return if server.wait_for_matches(WORKER_READY, count, timeout: timeout)

    raise "only #{server.output.scan(WORKER_READY).size} of #{count} workers ready:\n#{server.output}"
  end

  def wait_until(timeout: 10, message: "condition")
    timeout = GcStressMode.scale(timeout)
    deadline = now + timeout
    until (result = yield)
      raise "timed out waiting for #{message}" if now > deadline

      IO.select(nil, nil, nil, 0.05)
    end
    result
  end

  # Client threads that open a fresh connection per request until stopped;
  # returns [successes, failures] queues and the stopper.
  def fresh_connection_clients(server, threads: 4, timeout: 30)
    successes = Queue.new
    failures = Queue.new
    stop = false
    clients = Array.new(threads) do
      Thread.new do
        until stop
          begin
            Net::HTTP.start(server.host, server.port, read_timeout: timeout, open_timeout: timeout) { |h| h.get("/") }
            successes << 1
          rescue StandardError => e
            failures << e
          end
        end
      end
    end
    [successes, failures, lambda {
      stop = true
      clients.each(&:join)
    }]
  end

  def alive?(pid)
    Process.kill(0, pid)
    true
  rescue Errno::ESRCH
    false
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end

RSpec.configure { |c| c.include ClusterHelpers }
