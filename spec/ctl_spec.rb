# frozen_string_literal: true

require "json"
require "open3"
require "tmpdir"

# `butterflies ctl`: the control client, by state file, URL or pidfile,
# against real servers; and the state file itself.
RSpec.describe "butterflies ctl", timeout: 180 do
  def ctl(*args)
    Open3.capture3(*butterflies_command_without_app("ctl", *args))
  end

  def butterflies_command_without_app(*args)
    [RbConfig.ruby, "-I#{ServerHelpers::ROOT}/lib", File.join(ServerHelpers::ROOT, "exe/butterflies"), *args]
  end

  around do |example|
    Dir.mktmpdir { |dir| (@dir = dir) && example.run }
  end

  def state
    File.join(@dir, "state.json")
  end

  def start_with_state(*args, workers: nil, **options)
    flags = ["--control-url", "tcp://127.0.0.1:#{free_port}", "--control-token", "tok", "-S", state, *args]
    workers ? start_cluster(*flags, workers: workers, **options) : start_butterflies("-t", "2", *flags, **options)
  end

  it "writes a state file only its owner reads, and removes it on exit", stress: false do
    server = start_with_state
    expect(File.stat(state).mode & 0o777).to eq(0o600)
    expect(JSON.parse(File.read(state))).to include("pid" => server.pid, "control_token" => "tok")
    out, _err, status = ctl("-S", state, "stop")
    expect(status.exitstatus).to eq(0)
    expect(out).to include('"action":"stop"')
    expect(server.wait_for_output(/Goodbye/)).to be(true)
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
    expect(File.exist?(state)).to be(false)
  end

  it "reports status, stats and metrics, and refuses what single mode cannot do" do
    server = start_with_state
    Net::HTTP.get(URI(server.url("/")))
    # Counted when the connection is handed back, just after the response.
    wait_until(message: "the request counted") { JSON.parse(ctl("-S", state, "stats").first)["requests_count"] == 1 }
    out, _err, status = ctl("-S", state, "status")
    expect([status.exitstatus, out]).to eq([0, "running: single mode, 1 requests\n"])
    out, _err, status = ctl("-S", state, "stats")
    expect(status.exitstatus).to eq(0)
    expect(JSON.parse(out)["requests_count"]).to eq(1)
    out, _err, status = ctl("-S", state, "metrics")
    expect(status.exitstatus).to eq(0)
    expect(out).to include("# TYPE butterflies_requests_total counter")
    _out, err, status = ctl("-S", state, "phased-restart")
    expect(status.exitstatus).to eq(3)
    expect(err).to eq("butterflies ctl: phased-restart needs cluster mode (workers >= 1)\n")
  end

  it "says when the token is wrong or the server cannot be reached, with distinct statuses", stress: false do
    server = start_with_state
    url = JSON.parse(File.read(state))["control_url"]
    _out, err, status = ctl("-C", url, "-T", "wrong", "stats")
    expect([status.exitstatus, err]).to eq([3, "butterflies ctl: wrong or missing control token for #{url}\n"])
    server.stop
    _out, err, status = ctl("-C", url, "-T", "tok", "stats")
    expect(status.exitstatus).to eq(1)
    expect(err).to start_with("butterflies ctl: cannot reach the control server at #{url}")
    _out, err, status = ctl("stats")
    expect(status.exitstatus).to eq(2)
    expect(err).to start_with("butterflies ctl: stats needs the control server (-C, or -S with a state file)")
  end

  # The phased restart runs under stress in cluster_spec (USR1).
  it "phased-restarts a cluster, and stops it by its pidfile", stress: false do
    pidfile = File.join(@dir, "pid")
    server = start_with_state("--pidfile", pidfile, workers: 2)
    old = ready_workers(server).values
    _out, _err, status = ctl("-S", state, "phased-restart")
    expect(status.exitstatus).to eq(0)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 30)).to be(true)
    wait_until(timeout: 20, message: "old workers to stop") { old.none? { |pid| alive?(pid) } }
    out, err, status = ctl("-P", pidfile, "stop")
    expect([status.exitstatus, out]).to eq([0, "sent TERM to #{server.pid}\n"]), err
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
    _out, _err, status = ctl("-P", pidfile, "status")
    expect(status.exitstatus).to eq(2) # the pidfile is gone with the server
  end

  it "prints a single server's thread backtraces and GC statistics in Puma's shapes" do
    start_with_state
    out, _err, status = ctl("-S", state, "thread-backtraces")
    expect(status.exitstatus).to eq(0)
    threads = JSON.parse(out)
    expect(threads.map { |t| t["name"] }).to include("main", "butterflies-app-0", "butterflies-app-1",
                                                     "butterflies-control")
    # The question is answered on a control client thread, not the main one.
    client = threads.find { |t| t["name"] == "butterflies-control-client" }
    expect(client["backtrace"]).to include(a_string_including("control.rb"))
    expect(threads.find { |t| t["name"] == "main" }["backtrace"]).to include(a_string_including("signal_queue.rb"))
    out, _err, status = ctl("-S", state, "--timeout", "3", "gc-stats")
    expect(status.exitstatus).to eq(0)
    expect(JSON.parse(out)).to include("count" => an_instance_of(Integer), "heap_live_slots" => an_instance_of(Integer))
    _out, err, status = ctl("-P", "/nonexistent", "gc-stats")
    expect([status.exitstatus, err]).to eq([2, "butterflies ctl: gc-stats needs the control server (-C, or -S with a " \
                                               "state file) (see butterflies ctl --help)\n"])
  end

  # The hot restart and reload run under stress in cluster_spec and
  # control_spec; this one adds only the ctl client (plain Ruby).
  it "hot-restarts and reloads a cluster through the control server", stress: false do
    server = start_with_state(workers: 2)
    _out, _err, status = ctl("-S", state, "restart")
    expect(status.exitstatus).to eq(0)
    expect(server.wait_for_matches(/Listening on/, 2, timeout: 30)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 30)).to be(true)
    expect(server.exited?).to be(false) # the same pid, re-executed
    out, _err, status = ctl("-S", state, "reload")
    expect([status.exitstatus, out]).to eq([0, %({"status":"ok","action":"reload"}\n)])
    expect(server.wait_for_output(/HUP: no config file to reload; doing a phased restart/)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 6, timeout: 30)).to be(true)
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
  end

  it "halts at once" do
    server = start_with_state
    _out, _err, status = ctl("-S", state, "halt")
    expect(status.exitstatus).to eq(0)
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
    expect(server.output).to include("Halted")
  end

  it "replaces a file or symlink left at the state file's temporary path, never writing through it", stress: false do
    victim = File.join(@dir, "victim")
    File.write(victim, "keep")
    File.symlink(victim, "#{state}.tmp")
    start_with_state(spawn: { umask: 0 })
    expect(File.read(victim)).to eq("keep")
    expect(File.stat(state).mode & 0o777).to eq(0o600)
    expect(File.symlink?(state)).to be(false)
  end

  it "makes the state file 0600 when a world-readable one waits at its temporary path", stress: false do
    File.write("#{state}.tmp", "old", perm: 0o666)
    File.chmod(0o666, "#{state}.tmp")
    start_with_state(spawn: { umask: 0 })
    expect(File.stat(state).mode & 0o777).to eq(0o600)
  end

  it "takes the token from the environment or a file, keeping it out of the process list", stress: false do
    port = free_port
    server = start_butterflies("-t", "2", "--control-url", "tcp://127.0.0.1:#{port}",
                               env: { "BUTTERFLIES_CONTROL_TOKEN" => "from-env" })
    expect(File.read("/proc/#{server.pid}/cmdline")).not_to include("from-env")
    cmd = butterflies_command_without_app("ctl", "-C", "tcp://127.0.0.1:#{port}", "status")
    out, _err, status = Open3.capture3({ "BUTTERFLIES_CONTROL_TOKEN" => "from-env" }, *cmd)
    expect([status.exitstatus, out]).to eq([0, "running: single mode, 0 requests\n"])
    expect(Open3.capture3(*cmd)[2].exitstatus).not_to eq(0) # no token, no answer

    token_file = File.join(@dir, "token")
    File.write(token_file, "from-file\n")
    port = free_port
    server = start_butterflies("-t", "2", "--control-url", "tcp://127.0.0.1:#{port}", "--control-token-file", token_file)
    expect(File.read("/proc/#{server.pid}/cmdline")).not_to include("from-file")
    out, _err, status = ctl("-C", "tcp://127.0.0.1:#{port}", "--control-token-file", token_file, "status")
    expect([status.exitstatus, out]).to eq([0, "running: single mode, 0 requests\n"])
  end
end
