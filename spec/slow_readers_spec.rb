# frozen_string_literal: true

require "json"
require "tmpdir"

# Clients that never read their response must not take the app threads,
# nor the server's memory. Past the in-memory budget (max_parked_bytes)
# responses are spilled to unlinked temporary files; past the disk budget
# too (max_spilled_bytes), the slowest clients are closed.
RSpec.describe "clients that never read", timeout: 300 do
  # The app: GET /big answers 8 MiB, anything else "ok".
  let(:app) { File.join(ServerHelpers::ROOT, "bench/apps/slow_readers.ru") }
  let(:big) { 8 << 20 }

  around do |example|
    Dir.mktmpdir("butterflies-slow") do |dir|
      @dir = dir
      example.run
    ensure
      @readers&.each(&:close)
    end
  end

  def control_path
    File.join(@dir, "control.sock")
  end

  # Single mode: its stats slot is the process's, with the spill gauges.
  def start(*args)
    start_butterflies("--control-url", "unix://#{control_path}", *args, rackup: app, env: { "TMPDIR" => @dir })
  end

  def stats
    answer = UNIXSocket.open(control_path) do |s|
      s.write("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
      s.read
    end
    JSON.parse(answer.split("\r\n\r\n", 2).last)
  end

  def answered(stats)
    stats["butterflies"]["totals"]["requests_2xx"]
  end

  # `count` connections that each ask for the big body and read nothing.
  def non_readers(server, count)
    @readers = Array.new(count) do
      TCPSocket.new(server.host, server.port).tap { |s| s.write("GET /big HTTP/1.1\r\nHost: x\r\n\r\n") }
    end
  end

  # Seconds GET / takes, on a fresh connection.
  def timed_get(server)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    response = raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", timeout: 30)
    expect(response).to start_with("HTTP/1.1 200").and end_with("ok")
    Process.clock_gettime(Process::CLOCK_MONOTONIC) - started
  end

  # Whether the server closed `socket` (reset, or end of stream), reading
  # whatever waits on it.
  def closed_by_server?(socket)
    loop do
      chunk = socket.read_nonblock(1 << 20, exception: false)
      return true if chunk.nil?
      return false if chunk == :wait_readable
    end
  rescue Errno::ECONNRESET
    true
  end

  # The process's resident set: now, and at its highest (kernel figures).
  def rss_mb(pid)
    status = File.read("/proc/#{pid}/status")
    %w[VmRSS VmHWM].map { |key| status[/^#{key}:\s+(\d+) kB/, 1].to_i / 1024.0 }
  end

  it "hands 300 of them 8 MiB each off the app threads, spilled to disk, within the memory budget",
     timing: true do
    budget_mb = 64
    server = start("--max-parked-bytes", (budget_mb << 20).to_s)
    idle_mb, = rss_mb(server.pid)
    non_readers(server, 300)
    # Every response handed off: answered (counted once its app thread is
    # done with it), nothing left for an app thread.
    wait_until(timeout: 120, message: "300 responses handed off") do
      s = stats
      answered(s) == 300 && s["busy_threads"].zero?
    end
    held = stats
    expect(held["parked_bytes"]).to be <= budget_mb << 20
    # What the kernel's socket buffers did not take (a few MiB each) is on
    # disk: far more than the memory budget.
    expect(held["spilled_bytes"]).to be > 100 * big, "300 x 8 MiB less the socket buffers on disk: #{held}"
    expect(Dir.children(@dir) - ["control.sock"]).to eq([]), "spill files have no name"

    slowest = Array.new(5) { timed_get(server) }.max
    expect(slowest).to be < 0.1, "GET / took #{(slowest * 1000).round} ms"
    _, peak_mb = rss_mb(server.pid)
    expect(peak_mb).to be < idle_mb + budget_mb + 96, "peak #{peak_mb.round} MB, idle #{idle_mb.round} MB"

    @readers.each(&:close)
    wait_until(timeout: 30, message: "the spills given back") do
      stats.values_at("connections", "parked_bytes", "spilled_bytes") == [0, 0, 0]
    end
    expect(timed_get(server)).to be < 1
  end

  it "closes the slowest clients once neither budget has room, and goes on serving" do
    server = start("-t", "4:8", "--max-parked-bytes", (big * 2).to_s, "--max-spilled-bytes", (big * 4).to_s)
    non_readers(server, 24)
    wait_until(timeout: GcStressMode.scale(60), message: "slow clients closed to make room") do
      stats["butterflies"]["totals"]["slow_clients_closed"].positive?
    end
    s = stats
    expect(s["parked_bytes"]).to be <= big * 2
    expect(s["spilled_bytes"]).to be <= big * 4
    expect(timed_get(server)).to be < GcStressMode.scale(30)
    expect(@readers.count { |r| closed_by_server?(r) }).to be_positive
  end
end
