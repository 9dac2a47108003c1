# frozen_string_literal: true

require "socket"
require "butterflies/systemd"

# What the server tells systemd (sd_notify), read the way systemd reads it:
# datagrams on the socket NOTIFY_SOCKET names, each message kept with the
# time it came.
RSpec.describe "systemd notifications", timeout: 180 do
  around do |example|
    Dir.mktmpdir do |dir|
      path = File.join(dir, "notify.sock")
      @socket = Socket.new(:UNIX, :DGRAM)
      @socket.bind(Socket.sockaddr_un(path))
      @env = { "NOTIFY_SOCKET" => path }
      @messages = Queue.new
      reader = Thread.new do
        loop { @messages << [now, @socket.recv(4096)] }
      end
      example.run
    ensure
      reader&.kill
      @socket&.close
    end
  end

  # Messages received so far, oldest first: [[time, text], ...].
  def received
    @received ||= []
    @received << @messages.pop until @messages.empty?
    @received
  end

  def texts = received.map(&:last)

  # Waits until a message matching `pattern` arrived after the first
  # `from` messages; returns its index.
  def wait_for_message(pattern, from: 0, timeout: 30)
    wait_until(timeout: timeout, message: "#{pattern.inspect} (got #{texts.inspect})") do
      texts.each_index.find { |i| i >= from && texts[i].match?(pattern) }
    end
  end

  # The restarts it watches run under stress in cluster_spec; what it adds
  # is the notify protocol (plain Ruby).
  it "says READY once every worker booted, RELOADING with the clock during restarts, then STOPPING",
     stress: false do
    server = start_cluster(env: @env)
    ready = wait_for_message(/\AREADY=1\z/)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 2, timeout: 5)).to be(true), server.output
    expect(texts[0...ready]).to all(satisfy { |t| !t.start_with?("READY", "RELOADING", "STOPPING") })
    at = wait_for_message(/\ASTATUS=/)
    status = texts[at]
    expect(status).to match(/\ASTATUS=2 of 2 workers ready \(phase 0\), \d+ requests, 0 queued\z/), texts.inspect

    old = ready_workers(server).values
    server.signal("USR1")
    reloading = wait_for_message(/\ARELOADING=1\nMONOTONIC_USEC=\d+\z/, from: ready)
    usec = Integer(texts.fetch(reloading)[/MONOTONIC_USEC=(\d+)/, 1])
    expect(usec).to be_within(5_000_000).of(Process.clock_gettime(Process::CLOCK_MONOTONIC, :microsecond))
    again = wait_for_message(/\AREADY=1\z/, from: reloading)
    expect(old.select { |pid| alive?(pid) }).to eq([]), "READY while old workers still ran"

    server.signal("USR2") # a hot restart: the same pid, new workers
    hot = wait_for_message(/\ARELOADING=1\n/, from: again)
    wait_for_message(/\AREADY=1\z/, from: hot, timeout: 60)

    server.signal("TERM")
    wait_for_message(/\ASTOPPING=1\z/, from: hot)
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
  end

  it "feeds the watchdog only while every worker's heartbeat is fresh", timing: true do
    server = start_cluster("--worker-timeout", "5", env: @env.merge("WATCHDOG_USEC" => "2000000"), workers: 1)
    wait_for_message(/\AREADY=1\z/)
    pings = -> { received.select { |_, text| text == "WATCHDOG=1" }.map(&:first) }
    wait_until(timeout: 10, message: "three pings") { pings.call.size >= 3 }
    expect(pings.call.each_cons(2).map { |a, b| b - a }.max).to be < 1.5 # every half interval

    stuck = ready_workers(server)[0]
    stopped_at = now
    Process.kill("STOP", stuck)
    expect(server.wait_for_output(/worker 0 \(pid #{stuck}\) sent no heartbeat/, timeout: 20)).to be(true)
    wait_until(timeout: 20, message: "pings again with a new worker") do
      pings.call.any? { |t| t > stopped_at + 3 }
    end
    during = pings.call.select { |t| t > stopped_at + 2.2 && t < stopped_at + 3.9 }
    expect(during).to eq([]), "fed the watchdog while the only worker was stopped"
  end

  it "asks for more start time while a preload makes progress, and not while it hangs", timing: true do
    Dir.mktmpdir do |dir|
      idle_gate = File.join(dir, "idle-over")
      busy_gate = File.join(dir, "busy-over")
      rackup = File.join(dir, "config.ru")
      File.write(rackup, <<~RUBY)
        deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 60
        over = -> { Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline }
        warn "app: loading, waiting"
        sleep 0.05 until File.exist?(#{idle_gate.inspect}) || over.call
        warn "app: loading, working"
        Array.new(1000) { +"work" } until File.exist?(#{busy_gate.inspect}) || over.call
        run ->(_env) { [200, {}, ["loaded"]] }
      RUBY
      server = ServerProcess.new(butterflies_command("-b", "tcp://127.0.0.1:0", "-w", "1", "--preload", rackup),
                                 env: @env)
      (@servers ||= []) << server
      every = Butterflies::Systemd::EXTEND_EVERY
      expect(server.wait_for_output(/app: loading, waiting/, timeout: 30)).to be(true), server.output
      waiting = now
      # The first look may still see Rack loading; the next ones see a load
      # that only sleeps: no extension from them.
      IO.select(nil, nil, nil, every * 3 + 0.5)
      expect(received.select { |t, text| text.start_with?("EXTEND") && t > waiting + every + 0.5 }).to eq([])
      File.write(idle_gate, "")
      extend = wait_for_message(/\AEXTEND_TIMEOUT_USEC=10000000\z/, from: texts.size, timeout: every * 3)
      File.write(busy_gate, "")
      ready = wait_for_message(/\AREADY=1\z/, timeout: 30)
      expect(extend).to be < ready
      expect(texts[ready..].grep(/EXTEND/)).to eq([])
    end
  end

  # An example unit file's [section] key, as systemd reads it (last wins).
  def unit_setting(file, key)
    path = File.join(ServerHelpers::ROOT, "examples/systemd", file)
    File.readlines(path, chomp: true).grep(/\A#{key}=/).last&.split("=", 2)&.last
  end

  it "runs examples/systemd's units as written, on the socket they name", stress: false do
    expect(unit_setting("butterflies.service", "NotifyAccess")).to eq("main")
    expect(unit_setting("butterflies.service", "KillMode")).to eq("mixed")
    command = unit_setting("butterflies.service", "ExecStart").split
    runner = %w[/usr/bin/env bundle exec butterflies]
    expect(command.first(4)).to eq(runner)
    host, = unit_setting("butterflies.socket", "ListenStream").rpartition(":")
    listen = "#{host == '0.0.0.0' ? '127.0.0.1' : host}:#{free_port}"
    watchdog = Integer(unit_setting("butterflies.service", "WatchdogSec")) * 1_000_000
    unit_env = [unit_setting("butterflies.service", "Environment").split("=", 2)].to_h
    env = @env.merge("WATCHDOG_USEC" => watchdog.to_s).merge(unit_env, GcStressMode.server_env)
    launcher = [program("systemd-socket-activate"), "-l", listen,
                "--fdname=#{unit_setting('butterflies.socket', 'FileDescriptorName')}",
                *launcher_env_flags(env)]
    server = ServerProcess.new([*launcher, *butterflies_command(*command.drop(4))],
                               env: env, chdir: File.join(ServerHelpers::ROOT, "examples/hello"))
    (@servers ||= []) << server
    expect(server.wait_for_output(/ as 3\./, timeout: 10)).to be(true), server.output
    first = Thread.new { Net::HTTP.get_response(URI("http://#{listen}/")) }
    ready = wait_for_message(/\AREADY=1\z/, timeout: 60)
    expect(first.value.code).to eq("200")

    reload = unit_setting("butterflies.service", "ExecReload")[/-(\w+) \$MAINPID/, 1]
    server.signal(reload)
    reloading = wait_for_message(/\ARELOADING=1\n/, from: ready)
    wait_for_message(/\AREADY=1\z/, from: reloading, timeout: 60)
    expect(Net::HTTP.get_response(URI("http://#{listen}/")).code).to eq("200")

    server.signal(unit_setting("butterflies.service", "KillSignal").delete_prefix("SIG"))
    wait_for_message(/\ASTOPPING=1\z/, from: reloading)
    stop_timeout = Integer(unit_setting("butterflies.service", "TimeoutStopSec"))
    expect(server.wait(timeout: stop_timeout)&.exitstatus).to eq(0), server.output
  end

  it "says READY once listening and STOPPING on TERM in single mode", stress: false do
    server = start_butterflies(env: @env)
    wait_for_message(/\AREADY=1\z/)
    server.signal("TERM")
    wait_for_message(/\ASTOPPING=1\z/)
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
  end

  it "serves and stops as ever when nobody listens on NOTIFY_SOCKET", stress: false do
    gone = File.join(Dir.tmpdir, "butterflies-no-systemd-#{Process.pid}.sock")
    server = start_cluster(env: { "NOTIFY_SOCKET" => gone, "WATCHDOG_USEC" => "200000" })
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
    server.signal("TERM")
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
  end
end
