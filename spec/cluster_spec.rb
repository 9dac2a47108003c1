# frozen_string_literal: true

# Cluster mode with real forks and real signals. Every spec kills exactly the
# processes it started (the master; workers follow it, and are checked).
RSpec.describe "cluster mode", timeout: 120 do
  after do
    # Workers of a master that was killed must not outlive the spec.
    (@servers || []).each { |s| ready_workers(s).each_value { |pid| Process.kill("KILL", pid) if alive?(pid) } }
  end

  it "serves from every worker and replaces a worker killed with -9" do
    server = start_cluster
    pids = ready_workers(server)
    expect(pids.size).to eq(2)
    served = Array.new(20) { Net::HTTP.get(URI(server.url("/pid"))).to_i }
    expect(served - pids.values).to be_empty

    Process.kill("KILL", pids[0])
    expect(server.wait_for_output(/worker 0 \(pid #{pids[0]}\) died: killed by SIGKILL; respawning/)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 10)).to be(true)
    expect(ready_workers(server)[0]).not_to eq(pids[0])
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
  end

  it "pins each worker, with every thread it runs, to its own CPU with --pin-workers", stress: false do
    cpus_of = ->(status) { status[/^Cpus_allowed_list:\s*(\S+)/, 1] }
    allowed = cpus_of.call(File.read("/proc/self/status")).split(",").flat_map do |range|
      first, last = range.split("-").map(&:to_i)
      (first..(last || first)).to_a
    end
    server = start_cluster("--pin-workers")
    ready_workers(server).each do |index, pid|
      threads = Dir.glob("/proc/#{pid}/task/*/status").map { |f| cpus_of.call(File.read(f)) }
      expect(threads.size).to be > 3 # main, IO, app threads
      expect(threads.uniq).to eq([allowed[index % allowed.size].to_s])
      expect(server.output).to include("worker #{index} (pid #{pid}) pinned to CPU #{allowed[index % allowed.size]}")
    end
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
  end

  it "stops every worker when the master is killed with -9", stress: false do
    server = start_cluster
    pids = ready_workers(server).values
    server.kill # SIGKILL to the master only
    wait_until(timeout: 10, message: "workers to exit") { pids.none? { |pid| alive?(pid) } }
    expect(pids.map { |pid| alive?(pid) }).to eq([false, false])
  end

  # timing: under GC.stress a worker may miss a 2 s heartbeat by itself.
  it "replaces a worker that stops heart-beating", timing: true do
    server = start_cluster("--worker-timeout", "2")
    stalled = ready_workers(server)[1]
    Process.kill("STOP", stalled)
    noticed = /worker 1 \(pid #{stalled}\) sent no heartbeat for [\d.]+s \(worker_timeout 2.0s\); replacing it/
    expect(server.wait_for_output(noticed, timeout: 15)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 20)).to be(true)
    wait_until(timeout: 10, message: "the stalled worker to be killed") { !alive?(stalled) }
  end

  it "finishes a request in flight on TERM and exits 0", stress: false do
    server = start_cluster
    slow = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) }
    expect(server.wait_for_output(/app: sleeping 1.0/)).to be(true)
    server.signal("TERM")
    expect(slow.value.body).to eq("slept 1.0")
    expect(server.wait(timeout: 20)&.exitstatus).to eq(0)
    expect(server.output).to include("Goodbye")
  end

  it "grows and shrinks with TTIN and TTOU", stress: false do
    server = start_cluster
    server.signal("TTIN")
    expect(server.wait_for_output(/worker 2 \(pid \d+\) ready/)).to be(true)
    third = ready_workers(server)[2]
    server.signal("TTOU")
    wait_until(message: "worker 2 to stop") { !alive?(third) }
    expect(ready_workers(server).keys).to contain_exactly(0, 1, 2)
    expect(alive?(ready_workers(server)[0])).to be(true)
  end

  it "hot restarts on USR2 with no refused connection", stress: false do
    server = start_cluster("--shutdown-timeout", "5")
    master = server.pid
    successes, failures, stop = fresh_connection_clients(server, timeout: 20)
    # On a timeout, say what the clients saw (a flake hunt needs it).
    explain = lambda do |what|
      yield_failures = failures.size.positive? ? failures.pop.inspect : "none"
      "#{what}: #{successes.size} succeeded, #{failures.size + (failures.empty? ? 0 : 1)} failed (#{yield_failures})"
    end
    begin
      wait_until(message: "requests before the restart") { successes.size > 20 }
    rescue RuntimeError => e
      raise explain.call(e.message)
    end
    server.signal("USR2")
    expect(server.wait_for_matches(/Listening on/, 2, timeout: 30)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 30)).to be(true)
    before = successes.size
    begin
      wait_until(message: "requests after the restart") { successes.size > before + 20 }
    rescue RuntimeError => e
      raise explain.call("#{e.message}\n#{server.output}")
    end
    stop.call
    expect(failures.size).to eq(0), failures.size.positive? ? failures.pop.inspect : ""
    expect(server.pid).to eq(master) # exec keeps the pid
    expect(server.exited?).to be(false)
  end

  it "replaces workers one at a time on USR1 and picks up changed app code", stress: false do
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "version.rb"), "VERSION_SEEN = 'one'\n")
      File.write(File.join(dir, "config.ru"), <<~RU)
        require_relative "version"
        run ->(env) { [200, { "content-type" => "text/plain" }, [VERSION_SEEN]] }
      RU
      server = start_cluster(rackup: File.join(dir, "config.ru"))
      old = ready_workers(server).values
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("one")
      File.write(File.join(dir, "version.rb"), "VERSION_SEEN = 'two'\n")
      server.signal("USR1")
      expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 30)).to be(true)
      wait_until(timeout: 20, message: "old workers to stop") { old.none? { |pid| alive?(pid) } }
      expect(Array.new(10) { Net::HTTP.get(URI(server.url("/"))) }.uniq).to eq(["two"])
      # One at a time: the second replacement was ready only after the
      # first old worker had been told to stop.
      log = server.output
      pids = ready_workers(server)
      expect(log.index("worker 0 (pid #{pids[0]}) ready")).to be < log.index("worker 1 (pid #{pids[1]}) ready")
    end
  end

  it "answers 503 with Retry-After when the queue is full" do
    server = start_butterflies("-t", "1", "--io-threads", "1", "--queue-depth", "1")
    slow = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) }
    expect(server.wait_for_output(/app: sleeping 1.0/)).to be(true)
    queued = TCPSocket.new(server.host, server.port)
    queued.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # The queued request occupies the one queue slot; poll until a request
    # is refused (the queue slot is taken once the server read it).
    refused = wait_until(message: "a 503") do
      response = raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      response if response.start_with?("HTTP/1.1 503")
    end
    expect(refused).to include("Retry-After: 1")
    expect(read_response(queued, read_until: /Hello world!/)).to include("200 OK")
    expect(slow.value.code).to eq("200")
  ensure
    queued&.close
  end

  it "answers 503 to a request past request_timeout while others keep succeeding", timing: true do
    server = start_cluster("--request-timeout", "1")
    started = now
    slow = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=5"))) }
    expect(server.wait_for_output(/app: sleeping 5.0/)).to be(true)
    5.times { expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!") }
    response = slow.value
    expect(response.code).to eq("503")
    expect(now - started).to be < 5
    expect(server.wait_for_output(%r{GET /sleep timed out after 1.0s; answered 503})).to be(true)
  end

  it "replaces a worker whose app thread is stuck past request_hard_timeout", stress: false do
    server = start_cluster("--request-timeout", "1", "--request-hard-timeout", "2", "--shutdown-timeout", "1")
    before = ready_workers(server)
    stuck = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=60"))) }
    expect(server.wait_for_output(/app: sleeping 60.0/)).to be(true)
    expect(stuck.value.code).to eq("503")
    expect(server.wait_for_output(/has an app thread stuck past 2.0s; replacing it/, timeout: 15)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 20)).to be(true)
    replaced = before.values - ready_workers(server).values
    expect(replaced.size).to eq(1)
    wait_until(timeout: 20, message: "the stuck worker to exit") { !alive?(replaced.first) }
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
  end

  it "replaces a stuck worker on request_hard_timeout alone (no request_timeout)", stress: false do
    server = start_cluster("--request-hard-timeout", "2", "--shutdown-timeout", "1", workers: 1)
    first = ready_workers(server).fetch(0)
    Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=60"))) rescue nil } # rubocop:disable Style/RescueModifier
    expect(server.wait_for_output(/app: sleeping 60.0/)).to be(true)
    expect(server.wait_for_output(/has an app thread stuck past 2.0s; replacing it/, timeout: 15)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 2, timeout: 20)).to be(true)
    expect(ready_workers(server)[0]).not_to eq(first)
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
  end

  it "picks up changed code on USR1 with preload_app too", stress: false do
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "version.rb"), "VERSION_SEEN = 'one'\n")
      File.write(File.join(dir, "config.ru"), <<~RU)
        require_relative "version"
        run ->(env) { [200, { "content-type" => "text/plain" }, [VERSION_SEEN]] }
      RU
      server = start_cluster("--preload", rackup: File.join(dir, "config.ru"))
      old = ready_workers(server).values
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("one")
      File.write(File.join(dir, "version.rb"), "VERSION_SEEN = 'two'\n")
      server.signal("USR1")
      wait_until(timeout: 30, message: "old workers to stop") { old.none? { |pid| alive?(pid) } }
      expect(Array.new(10) { Net::HTTP.get(URI(server.url("/"))) }.uniq).to eq(["two"])
    end
  end

  it "serves a Unix socket in cluster mode" do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "bf.sock")
      server = ServerProcess.start(butterflies_command("-w", "2", "-b", "unix://#{path}", ServerHelpers::APP),
                                   ready: %r{Listening on unix://})
      (@servers ||= []) << server
      wait_for_ready_workers(server, 2)
      socket = UNIXSocket.new(path)
      socket.write("GET /array HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      expect(read_response(socket)).to end_with("Hello world!")
      server.stop
      expect(File.exist?(path)).to be(false)
    end
  end
end

RSpec.describe "request timeouts in single mode", timeout: 120 do
  it "answers 503 to requests still queued at their deadline while every app thread is stuck" do
    server = start_butterflies("-t", "2", "--request-timeout", "1")
    stuck = Array.new(2) { Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=30"))) } }
    expect(server.wait_for_matches(/app: sleeping 30.0/, 2)).to be(true)
    # Both app threads sleep; these two wait in the queue.
    queued = Array.new(2) { Thread.new { Net::HTTP.get_response(URI(server.url("/"))) } }
    expect(queued.map { |t| t.value.code }).to eq(%w[503 503])
    expect(stuck.map { |t| t.value.code }).to eq(%w[503 503])
    expect(server.wait_for_matches(%r{GET / timed out after 1.0s; answered 503}, 2)).to be(true)
  end
end
