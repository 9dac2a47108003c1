# frozen_string_literal: true

# Shared pieces of the benchmark scripts: starting servers pinned to a CPU,
# checking their answer, running wrk, sampling the RSS of a process group.

require "net/http"
require "rbconfig"
require "socket"
require "tmpdir"

# What the benchmark drivers share: server command lines, start and stop,
# readiness, wrk runs and their figures, and process-group CPU and RSS.
module Bench
  ROOT = File.expand_path("..", __dir__)
  APPS = File.join(ROOT, "bench/apps")
  # The wrk script an app is measured with, where it needs one.
  SCRIPTS = {
    "post" => File.join(ROOT, "bench/post.lua"),
    "plaintext" => File.join(ROOT, "bench/pipeline.lua")
  }.freeze

  module_function

  def free_port
    TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
  end

  def monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Server command lines by name, for an app file and a port.
  def command(name, app, port, extra: [])
    case name
    when "butterflies"
      [RbConfig.ruby, "-I#{ROOT}/lib", "#{ROOT}/exe/butterflies", "-q", "-e", "production", "-b", "tcp://127.0.0.1:#{port}",
       *extra, app]
    when "butterflies-w2"
      [RbConfig.ruby, "-I#{ROOT}/lib", "#{ROOT}/exe/butterflies", "-q", "-e", "production", "-w", "2", "-b",
       "tcp://127.0.0.1:#{port}", app]
    when "butterflies-w2-pinned"
      [RbConfig.ruby, "-I#{ROOT}/lib", "#{ROOT}/exe/butterflies", "-q", "-e", "production", "-w", "2", "--pin-workers",
       "-b", "tcp://127.0.0.1:#{port}", app]
    when "puma" then ["puma", "-q", "-e", "production", "-t", "16:16", "-b", "tcp://127.0.0.1:#{port}", app]
    when "puma-w2" then ["puma", "-q", "-e", "production", "-w", "2", "-t", "8:8", "-b", "tcp://127.0.0.1:#{port}", app]
    when "unicorn"
      conf = File.join(Dir.tmpdir, "bench-unicorn.rb")
      File.write(conf, "worker_processes 2\n")
      ["unicorn", "-E", "production", "-c", conf, "-l", "127.0.0.1:#{port}", app]
    when "thin" then ["thin", "-q", "-e", "production", "-a", "127.0.0.1", "-p", port.to_s, "-R", app, "start"]
    when "ceiling" then [File.join(ROOT, "target/release/examples/ceiling"), "127.0.0.1:#{port}"]
    # The ceiling polling 50 us before it sleeps, as Butterflies' idle_spin.
    when "ceiling-spin" then [File.join(ROOT, "target/release/examples/ceiling"), "127.0.0.1:#{port}", "50"]
    else raise ArgumentError, "unknown server #{name}"
    end
  end

  # Starts a server in its own process group, pinned to `cpu` (nil: not
  # pinned). Returns its pid.
  def start(name, app, port, cpu: 0, env: {}, extra: [])
    cmd = command(name, app, port, extra: extra)
    cmd = ["taskset", "-c", cpu.to_s, *cmd] if cpu
    Process.spawn({ "RACK_ENV" => "production" }.merge(env), *cmd, pgroup: true, out: File::NULL, err: File::NULL)
  end

  def stop(pid)
    Process.kill("TERM", -pid)
    deadline = monotonic + 10
    until Process.wait(pid, Process::WNOHANG)
      if monotonic > deadline
        Process.kill("KILL", -pid)
        Process.wait(pid)
        break
      end
      sleep 0.05
    end
  rescue Errno::ESRCH, Errno::ECHILD
    nil
  end

  # Waits until the server answers, and checks the answer. `check` gets the
  # Net::HTTPResponse and returns an error message or nil.
  def wait_ready(port, path: "/", post: nil, check: ->(_res) {}, timeout: 30)
    deadline = monotonic + timeout
    begin
      res = Net::HTTP.start("127.0.0.1", port, read_timeout: 10) do |http|
        post ? http.post(path, post) : http.get(path)
      end
      problem = res.code == "200" ? check.call(res) : "status #{res.code}"
      raise "wrong answer: #{problem}" if problem
    rescue SystemCallError, EOFError, Net::ReadTimeout
      raise "server on #{port} did not come up" if monotonic > deadline

      sleep 0.1
      retry
    end
  end

  # Runs wrk on `cpu`; returns req/s, p50/p99 in ms, and errors.
  def wrk(port, connections:, seconds:, cpu: 1, close: false, script: nil, path: "/")
    cmd = ["wrk", "-t1", "-c#{connections}", "-d#{seconds}s", "--latency", "--timeout", "10s"]
    cmd = ["taskset", "-c", cpu.to_s, *cmd] if cpu
    cmd += ["-H", "Connection: close"] if close
    cmd += ["-s", script] if script
    out = IO.popen([*cmd, "http://127.0.0.1:#{port}#{path}"], err: %i[child out], &:read)
    socket_errors = out[/Socket errors: (.*)/, 1].to_s.scan(/\d+/).sum(&:to_i)
    {
      rps: out[%r{Requests/sec:\s+([\d.]+)}, 1].to_f,
      p50: millis(out[/^\s+50%\s+([\d.]+\w+)/, 1]),
      p99: millis(out[/^\s+99%\s+([\d.]+\w+)/, 1]),
      errors: socket_errors + out[/Non-2xx or 3xx responses: (\d+)/, 1].to_i
    }
  end

  def millis(text)
    return nil unless text

    value = text.to_f
    case text
    when /us\z/ then value / 1000
    when /ms\z/ then value
    when /s\z/ then value * 1000
    else value
    end
  end

  # Total RSS (MiB) of the processes in group `pgid`.
  def group_rss_mb(pgid)
    kb = Dir.glob("/proc/[0-9]*/stat").sum do |stat|
      next 0 unless File.read(stat).split(") ").last.split[2].to_i == pgid

      File.read(stat.sub("stat", "status"))[/VmRSS:\s+(\d+)/, 1].to_i
    rescue Errno::ENOENT, Errno::ESRCH
      0
    end
    kb / 1024.0
  end

  CLOCK_TICKS = 100.0 # USER_HZ on Linux

  # CPU seconds (user + system, all threads) used so far by the processes
  # in group `pgid`.
  def group_cpu_seconds(pgid)
    Dir.glob("/proc/[0-9]*/stat").sum do |stat|
      fields = File.read(stat).split(") ").last.split
      next 0 unless fields[2].to_i == pgid

      (fields[11].to_i + fields[12].to_i) / CLOCK_TICKS
    rescue Errno::ENOENT, Errno::ESRCH
      0
    end
  end

  # CPU seconds the block's children (wrk) and the server group used.
  def cpu_used(pgid)
    server_before = group_cpu_seconds(pgid)
    children_before = Process.times.then { |t| t.cutime + t.cstime }
    result = yield
    children = Process.times.then { |t| t.cutime + t.cstime } - children_before
    [result, group_cpu_seconds(pgid) - server_before, children]
  end

  # Samples the peak RSS of a process group while the block runs.
  def peak_rss(pgid)
    peak = 0.0
    sampler = Thread.new do
      loop do
        peak = [peak, group_rss_mb(pgid)].max
        sleep 0.2
      end
    end
    result = yield
    sampler.kill
    [result, [peak, group_rss_mb(pgid)].max]
  end
end
