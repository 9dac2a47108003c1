# frozen_string_literal: true

require "json"
require "open3"

# The process that supervises (a cluster master, or single mode's main
# thread) never waits on anyone: idle or non-reading control clients, a
# stdout nobody reads or nobody holds, signals during a preloading boot.
# Each example lets something try to stall it, then checks that a killed
# worker is replaced and TERM is obeyed within a deadline.
RSpec.describe "the master never waits on anyone", timeout: 180 do
  def token = "tok"

  def control_port
    TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
  end

  def control_flags(port)
    ["--control-url", "tcp://127.0.0.1:#{port}", "--control-token", token]
  end

  def stats(port)
    Net::HTTP.start("127.0.0.1", port, read_timeout: 5, open_timeout: 5) do |h|
      JSON.parse(h.get("/stats?token=#{token}").body)
    end
  end

  # The raw answer to GET `target` on the Unix control socket at `path`,
  # or "" when none arrives within five seconds.
  def unix_get(path, target)
    UNIXSocket.open(path) do |socket|
      socket.write("GET #{target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      answer = +""
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      while (left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)).positive?
        break unless socket.wait_readable(left)

        chunk = socket.read_nonblock(65_536, exception: false)
        break if chunk.nil?

        answer << chunk unless chunk == :wait_readable
      end
      answer
    end
  end

  def booted_pids(port)
    stats(port)["worker_status"].select { |w| w["booted"] }.map { |w| w["pid"] }
  end

  # Connections made by `connect` that send nothing, each opened again as
  # soon as the server closes it, until the returned lambda is called.
  def idle_clients(count, &connect)
    stop = false
    threads = Array.new(count) do
      Thread.new do
        until stop
          socket = connect.call
          socket.wait_readable(0.2) until stop || socket.read_nonblock(1, exception: false).nil?
          socket.close
        end
      rescue SystemCallError, IOError
        retry unless stop
      end
    end
    lambda {
      stop = true
      threads.each(&:join)
    }
  end

  # The pids whose parent is `pid` (from /proc: no procps needed).
  def children(pid)
    Dir.glob("/proc/[0-9]*/stat").filter_map do |path|
      fields = File.read(path).split(") ", 2).last.to_s.split
      Integer(path[%r{/proc/(\d+)/}, 1]) if fields[1].to_i == pid
    rescue SystemCallError
      nil
    end
  end

  # Kills worker `pid` and waits for the master to have another booted.
  def expect_replaced(port, pid)
    Process.kill("KILL", pid)
    wait_until(timeout: 10, message: "worker #{pid} replaced") do
      pids = booted_pids(port)
      !pids.include?(pid) && pids.size >= 1
    end
  end

  def expect_prompt_stop(server, within: 10)
    server.signal("TERM")
    expect(server.wait(timeout: within)&.exitstatus).to eq(0), server.output
  end

  it "replaces a killed worker and stops on TERM while idle clients hold the TCP control port", timing: true do
    port = control_port
    server = start_cluster("--worker-timeout", "5", *control_flags(port))
    stop_clients = idle_clients(48) { TCPSocket.new("127.0.0.1", port) }
    victim = ready_workers(server)[0]
    Process.kill("KILL", victim)
    expect(server.wait_for_output(/worker 0 \(pid #{victim}\) died/, timeout: 5)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 10)).to be(true)
    # An operator still gets through: the idle clients give way.
    expect(stats(port)["booted_workers"]).to eq(2)
    server.signal("TTIN")
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 10)).to be(true)
    expect_prompt_stop(server)
    stop_clients.call
    expect(server.output).not_to include("sent no heartbeat")
  end

  it "stops on TERM in single mode while idle clients hold a Unix control socket", timing: true do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "control.sock")
      server = start_butterflies("-t", "2", "--control-url", "unix://#{path}")
      stop_clients = idle_clients(48) { UNIXSocket.new(path) }
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
      # An operator still gets an answer: the idle clients give way.
      expect(unix_get(path, "/stats")).to start_with("HTTP/1.1 200")
      expect_prompt_stop(server, within: 5)
      stop_clients.call
    end
  end

  it "goes on supervising while a client does not read a large thread-backtraces answer", timing: true do
    port = control_port
    server = start_cluster(*control_flags(port), workers: 1)
    expect(Net::HTTP.get(URI(server.url("/deep-threads?n=400")))).to eq("400")
    hog = TCPSocket.new("127.0.0.1", port)
    hog.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    hog.write("GET /thread-backtraces?token=#{token}&timeout=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(hog.wait_readable(10)).to be_truthy # the answer has begun; it is never read
    expect_replaced(port, ready_workers(server)[0])
    expect_prompt_stop(server)
    hog.close
  end

  context "when stdout is a pipe" do
    # A server whose stdout is a pipe the spec holds, stderr a file.
    def spawn_piped(*args, dir:)
      reader, writer = IO.pipe
      err = File.join(dir, "stderr")
      pid = Process.spawn(GcStressMode.server_env, *butterflies_command("-b", "tcp://127.0.0.1:0", *args,
                                                                        ServerHelpers::APP),
                          out: writer, err: err, pgroup: true, in: File::NULL)
      writer.close
      (@piped ||= []) << pid
      [pid, reader, err]
    end

    after do
      (@piped || []).each do |pid|
        Process.kill("KILL", pid)
        Process.wait(pid)
      rescue Errno::ESRCH, Errno::ECHILD
        nil
      end
    end

    def read_until(reader, pattern, timeout: 30)
      seen = +""
      deadline = now + GcStressMode.scale(timeout)
      until seen.match?(pattern)
        raise "no #{pattern.inspect} in:\n#{seen}" if now > deadline

        seen << reader.read_nonblock(65_536) if reader.wait_readable(0.2)
      end
      seen
    end

    def exit_status(pid, timeout:)
      wait_until(timeout: timeout, message: "pid #{pid} to exit") { Process.wait2(pid, Process::WNOHANG)&.last }
    end

    def http_port(boot)
      Integer(boot[%r{Listening on http://127\.0\.0\.1:(\d+)}, 1])
    end

    it "survives the reader going away, in a cluster and in single mode", timing: true do
      Dir.mktmpdir do |dir|
        port = control_port
        pid, reader, = spawn_piped("-w", "2", "-t", "2", "--io-threads", "1", *control_flags(port), dir: dir)
        read_until(reader, /(worker \d \(pid \d+\) ready.*){2}/m)
        reader.close
        expect_replaced(port, booted_pids(port).first)
        server_pid = pid
        Process.kill("TERM", server_pid)
        expect(exit_status(server_pid, timeout: 15).exitstatus).to eq(0)

        single, reader, = spawn_piped("-t", "2", dir: dir)
        read_until(reader, /Listening on/)
        reader.close
        Process.kill("TERM", single)
        expect(exit_status(single, timeout: 10).exitstatus).to eq(0)
      end
    end

    it "keeps supervising when nobody drains it, in a cluster and in single mode", timing: true do
      Dir.mktmpdir do |dir|
        port = control_port
        pid, reader, = spawn_piped("-w", "2", "-t", "2", "--io-threads", "1", "--log-requests", *control_flags(port),
                                   dir: dir)
        boot = read_until(reader, /(worker \d \(pid \d+\) ready.*){2}/m)
        fill_stdout(http_port(boot)) # the access log fills the pipe, which is never read again
        2.times { expect_replaced(port, booted_pids(port).first) }
        Process.kill("TERM", pid)
        expect(exit_status(pid, timeout: 20).exitstatus).to eq(0)

        single, reader, = spawn_piped("-t", "2", "--log-requests", dir: dir)
        fill_stdout(http_port(read_until(reader, /Listening on/)))
        Process.kill("TERM", single)
        expect(exit_status(single, timeout: 15).exitstatus).to eq(0)
      end
    end

    # Enough access log lines to fill a pipe's 64 KiB several times.
    def fill_stdout(port)
      Net::HTTP.start("127.0.0.1", port) { |h| 3000.times { h.get("/") } }
    end
  end

  it "never runs more workers than asked when phased restarts overlap", timing: true do
    port = control_port
    server = start_cluster(*control_flags(port))
    3.times do |phase|
      server.signal("USR1")
      expect(server.wait_for_matches(/Phased restart/, phase + 1)).to be(true)
    end
    settled = wait_until(timeout: 40, message: "every worker in phase 3") do
      s = stats(port)
      s if s["worker_status"].all? { |w| w["phase"] == 3 && w["booted"] } && children(server.pid).size == 2
    end
    expect(settled["workers"]).to eq(2)
    server.signal("TTOU")
    wait_until(timeout: 20, message: "one worker left") { children(server.pid).size == 1 }
    expect(stats(port)["workers"]).to eq(1)
  end

  it "refuses more workers than the stats region has room for" do
    limit = 256 # Stats::MAX_WORKERS
    _out, err, status = Open3.capture3(*butterflies_command("-w", (limit + 1).to_s, "-b", "tcp://127.0.0.1:0",
                                                            ServerHelpers::APP))
    expect(status.exitstatus).to eq(2)
    expect(err).to include("must be a whole number from 0 to #{limit}")
    expect(err.lines.size).to eq(1), err
  end

  # The region has a slot for each of 256 workers and one more each, for
  # successors and replacements that run beside the worker they replace.
  it "takes the largest cluster allowed through a phased restart while workers are killed", timing: true,
                                                                                            timeout: 420 do
    limit = 256 # Stats::MAX_WORKERS
    port = control_port
    server = start_butterflies("-w", limit.to_s, "--preload", "-t", "1", "--io-threads", "1", *control_flags(port),
                               rackup: File.expand_path("fixtures/sized.ru", __dir__))
    wait_for_ready_workers(server, limit, timeout: 120)
    server.signal("USR1")
    expect(server.wait_for_output(/Phased restart/)).to be(true)
    # Crash replacements take slots beside the restart's successors.
    ready_workers(server).values.last(8).each { |pid| Process.kill("KILL", pid) }
    wait_until(timeout: 360, message: "every worker replaced") do
      s = stats(port)
      s["workers"] == limit && s["worker_status"].all? { |w| w["phase"] == 1 && w["booted"] }
    end
    expect(server.exited?).to be(false)
    expect(server.output).not_to match(/stats slot|Error|\.rb:\d+:in/)
    expect(children(server.pid).size).to eq(limit)
    expect(Net::HTTP.get_response(URI(server.url)).body).to eq("Hello world!")
  end

  it "counts a worker replaced for no heartbeat once, as a timeout", timing: true do
    port = control_port
    server = start_cluster("--worker-timeout", "2", *control_flags(port), workers: 1)
    stalled = ready_workers(server)[0]
    Process.kill("STOP", stalled)
    expect(server.wait_for_output(/worker 0 \(pid #{stalled}\) replaced after no heartbeat: killed by SIGKILL/,
                                  timeout: 20)).to be(true)
    restarts = stats(port)["butterflies"]["restarts"]
    expect(restarts).to include("timeout" => 1, "crash" => 0)
    expect(server.output).not_to match(/pid #{stalled}\) died/)
  end

  context "with signals sent while a preloaded app boots" do
    it "queues them until the master loop runs, and acts on each", timing: true do
      Dir.mktmpdir do |dir|
        gate = File.join(dir, "gate")
        server = start_butterflies("-w", "1", "-t", "2", "--io-threads", "1", "--preload",
                                   rackup: File.join(ServerHelpers::ROOT, "spec/fixtures/slow_boot.ru"),
                                   env: { "SLOW_BOOT_GATE" => gate }, ready: /app: loading slowly/)
        server.signal("TTIN")
        server.signal("USR2")
        File.write(gate, "")
        expect(server.wait_for_output(/\* workers: 2/)).to be(true)
        expect(server.wait_for_output(/Hot restart/)).to be(true)
        expect(server.wait_for_matches(/Listening on/, 2, timeout: 30)).to be(true), server.output
        expect(server.exited?).to be(false)
        expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 1, timeout: 30)).to be(true)
      end
    end
  end
end
