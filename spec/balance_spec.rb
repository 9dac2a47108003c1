# frozen_string_literal: true

# Kernel balancing across cluster workers: each worker listens on sockets
# of its own in every TCP address's SO_REUSEPORT group, the master holds
# them all, and the kernel spreads connections over them as they open.
RSpec.describe "cluster mode balancing", timeout: 180 do
  after do
    (@servers || []).each { |s| ready_workers(s).each_value { |pid| Process.kill("KILL", pid) if alive?(pid) } }
  end

  # Opens `count` connections at once, as a proxy opens its pool, then asks
  # each which worker has it.
  def pool_pids(server, count)
    sockets = Array.new(count) { TCPSocket.new(server.host, server.port) }
    sockets.each { |s| s.write("GET /pid HTTP/1.1\r\nHost: x\r\n\r\n") }
    sockets.map { |s| pid_from(s) }
  ensure
    sockets&.each(&:close)
  end

  # The pid a /pid response names, read whole: to its Content-Length, or
  # to the last chunk (Rack 2.2's Lint hides an Array body's to_ary).
  def pid_from(socket)
    complete = /\r\n\r\n(\d+\z|.*\r\n0\r\n\r\n\z)/m
    Integer(body_of(read_response(socket, read_until: complete)))
  end

  [2, 4].each do |workers|
    it "spreads a pool of fresh keep-alive connections over all #{workers} workers as it opens",
       stress: workers == 2 do
      server = start_cluster(workers: workers)
      count = 16 * workers
      tally = pool_pids(server, count).tally
      expect(tally.keys).to match_array(ready_workers(server).values)
      # Connections are hashed over the workers' sockets: a worker holding
      # fewer than 4 of its 16 has odds below 1 in 10,000. Before, all of a
      # pool often landed on one worker.
      expect(tally.values.min).to be >= 4, tally.inspect
    end
  end

  it "loses no queued connection when workers are removed with TTOU under load", stress: false do
    server = start_cluster(workers: 3)
    successes, failures, stop = fresh_connection_clients(server)
    wait_until(message: "requests before TTOU") { successes.size > 50 }
    pids = ready_workers(server)
    server.signal("TTOU")
    wait_until(message: "worker 2 to stop") { !alive?(pids[2]) }
    server.signal("TTOU")
    wait_until(message: "worker 1 to stop") { !alive?(pids[1]) }
    before = successes.size
    wait_until(message: "requests after TTOU") { successes.size > before + 50 }
    stop.call
    expect(failures.size).to eq(0), failures.empty? ? "" : failures.pop.inspect
  end

  it "serves the connections queued for a worker killed with -9 once it is replaced", stress: false do
    server = start_cluster(workers: 2)
    successes, failures, stop = fresh_connection_clients(server)
    wait_until(message: "requests before the kill") { successes.size > 50 }
    victim = ready_workers(server)[1]
    Process.kill("KILL", victim)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 30)).to be(true)
    before = successes.size
    wait_until(message: "requests after the respawn") { successes.size > before + 50 }
    stop.call
    # At most the requests the killed worker was running (one per client)
    # fail; a connection waiting in its sockets' queue waits for its
    # replacement and is served.
    expect(failures.size).to be <= 4, failures.empty? ? "" : failures.pop.inspect
  end
end
