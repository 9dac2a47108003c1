# frozen_string_literal: true

require_relative "lib"

# The suite's extra scenarios: idle connections, mixed fast and slow
# requests (head-of-line blocking), and slowloris clients.
module Scenarios
  module_function

  def run_all(servers, apps:, duration:)
    {
      ceiling_pair: ceiling_pair(duration: duration),
      puma_pairs: servers.include?("puma") ? puma_pairs(apps: apps) : {},
      idle: idle(duration: duration),
      mixed: (servers & %w[butterflies puma]).to_h { |s| [s, mixed(s, duration: duration)] },
      slowloris: slowloris(duration: duration)
    }
  end

  def hello
    File.join(Bench::APPS, "hello.ru")
  end

  # Alternates wrk runs (hello, c=32) between two ports, `rounds` each:
  # the medians, measured a few seconds apart so that a slow or fast phase
  # of this shared machine hits both.
  def alternate(ports, duration:, rounds: 3)
    runs = Array.new(rounds) { ports.map { |port| Bench.wrk(port, connections: 32, seconds: duration)[:rps] } }
    runs.transpose.map { |list| list.sort[list.size / 2] }
  end

  # Butterflies and `other` started side by side (both on CPU 0), then wrk
  # (CPU 1) alternating between them, `rounds` each: the two measured
  # seconds apart instead of minutes apart, so a slow or fast phase of this
  # shared machine hits both. Returns each round's ratio (Butterflies /
  # other) and the median.
  def pair(other, duration:, app: "hello", conns: 32, close: false, rounds: 5)
    spec = PAIR_APPS.fetch(app)
    file = File.join(Bench::APPS, "#{app}.ru")
    ports = [Bench.free_port, Bench.free_port]
    pids = [Bench.start("butterflies", file, ports[0]), Bench.start(other, file, ports[1])]
    ports.each { |port| Bench.wait_ready(port, post: spec[:post]) }
    run = ->(port, seconds) { Bench.wrk(port, connections: conns, seconds: seconds, script: spec[:script], close: close)[:rps] }
    ports.each { |port| run.call(port, 1) }
    ratios = Array.new(rounds) do
      ours, theirs = ports.map { |port| run.call(port, duration) }
      ours / theirs
    end
    { ratios: ratios.map { |r| r.round(3) }, median: ratios.sort[rounds / 2] }
  ensure
    pids&.each { |pid| Bench.stop(pid) }
  end

  PAIR_APPS = {
    "hello" => {}, "json" => {}, "big" => {}, "stream" => {}, "sinatra" => {},
    "post" => { post: "a" * 65_536, script: File.join(__dir__, "post.lua") }
  }.freeze

  # hello c=32 against the ceiling.
  def ceiling_pair(duration:)
    pair("ceiling", duration: duration)
  end

  # Every target that is a ratio to Puma, measured as an alternating pair
  # (3 s rounds): keyed like the targets, "app c=N" ("hello close c=32").
  def puma_pairs(apps:, rounds: 5, duration: 3)
    runs = [["hello", 1, false], ["hello", 32, false], ["hello", 256, false], ["hello", 32, true]]
    runs += (apps & %w[post stream big json sinatra]).map { |app| [app, 32, false] }
    runs.select { |app, _, _| apps.include?(app) }.to_h do |app, conns, close|
      key = "#{app}#{close ? ' close' : ''} c=#{conns}"
      warn "  pair with puma: #{key}"
      [key, pair("puma", app: app, conns: conns, close: close, rounds: rounds, duration: duration)]
    end
  end

  # 10,000 keep-alive connections opened, used once and left idle on one
  # server while wrk measures hello on it and on a twin without them,
  # alternately: throughput against plain, RSS growth, and whether any of
  # them was dropped. Opening them and the runs take longer than the default
  # 20 s idle timeout, so both servers run with a 120 s one: any drop is a
  # real one.
  def idle(duration:, count: 10_000)
    ports = [Bench.free_port, Bench.free_port]
    pids = ports.map { |port| Bench.start("butterflies", hello, port, extra: ["--idle-timeout", "120"]) }
    ports.each { |port| Bench.wait_ready(port) }
    ports.each { |port| Bench.wrk(port, connections: 32, seconds: 1) }
    before = Bench.group_rss_mb(pids[1])
    # Opened 500 at a time: 10,000 requests at once would overflow the
    # request queue (1024) and get 503s, by design.
    sockets = []
    (count / 500).times do
      batch = Array.new(500) { TCPSocket.new("127.0.0.1", ports[1]).tap { |s| s.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n") } }
      batch.each { |s| s.readpartial(4096).start_with?("HTTP/1.1 200") or raise "idle: a connection was not served" }
      sockets.concat(batch)
    end
    (plain, loaded), peak = Bench.peak_rss(pids[1]) { alternate(ports, duration: duration) }
    # How each connection looks now: open and quiet (:wait_readable), or
    # closed (nil), reset (an error class), or with unexpected bytes.
    states = Hash.new(0)
    sockets.each do |s|
      state = s.read_nonblock(64, exception: false)
      states[state.is_a?(String) ? "bytes: #{state[0, 20].inspect}" : state.inspect] += 1
    rescue SystemCallError => e
      states[e.class.name] += 1
    end
    sockets.each(&:close)
    dropped = count - states[":wait_readable"]
    { ratio: loaded / plain, growth: peak - before, dropped: dropped, states: states, plain: plain.round, loaded: loaded.round }
  ensure
    pids&.each { |pid| Bench.stop(pid) }
  end

  # 64 connections, each sending 9 hello requests then one 50 ms request,
  # for `duration` seconds: the p99 latency (ms) of the fast requests.
  def mixed(server, duration:, extra: [])
    port = Bench.free_port
    pid = Bench.start(server, File.join(Bench::APPS, "mixed.ru"), port, extra: extra)
    Bench.wait_ready(port)
    client = File.join(__dir__, "mixed_client.rb")
    out = IO.popen(["taskset", "-c", "1", RbConfig.ruby, client, port.to_s, duration.to_s, "64"], &:read)
    Float(out[/p99_ms=([\d.]+)/, 1])
  ensure
    Bench.stop(pid) if pid
  end

  # hello throughput with 200 connections trickling a head one byte a second,
  # as a share of plain hello on a twin server measured alternately.
  def slowloris(duration:)
    ports = [Bench.free_port, Bench.free_port]
    # Both with a 120 s header timeout, so the tricklers stay for all the
    # rounds instead of getting their 408 after the default 20 s.
    pids = ports.map { |port| Bench.start("butterflies", hello, port, extra: ["--header-timeout", "120"]) }
    ports.each { |port| Bench.wait_ready(port) }
    ports.each { |port| Bench.wrk(port, connections: 32, seconds: 1) }
    sockets = Array.new(200) { TCPSocket.new("127.0.0.1", ports[1]) }
    head = "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: #{'p' * 200}\r\n"
    trickle = Thread.new do
      head.each_char do |char|
        sockets.each { |s| s.write_nonblock(char, exception: false) rescue nil } # rubocop:disable Style/RescueModifier
        sleep 1
      end
    end
    plain, loaded = alternate(ports, duration: duration)
    trickle.kill
    sockets.each(&:close)
    loaded / plain
  ensure
    pids&.each { |pid| Bench.stop(pid) }
  end
end
