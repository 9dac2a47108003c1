# frozen_string_literal: true

require "socket"
require "timeout"
require_relative "gc_stress_mode"

# A server under test: a real process in its own process group, started
# from a command line. Ready once it printed "Listening on http://HOST:PORT";
# that line gives the port (servers are started on port 0, so no port is
# guessed). `stop` and `kill` reach exactly the process that was started.
class ServerProcess
  ROOT = File.expand_path("../..", __dir__)
  BOOT_TIMEOUT = 30
  LISTENING = %r{Listening on https?://(\S+):(\d+)}

  attr_reader :pid, :port, :host, :output

  def self.start(*args, **kwargs)
    new(*args, **kwargs).tap(&:wait_until_listening)
  end

  # `command` is an argv array; env vars are added to ours.
  # ready: the line that says it is listening (for Unix sockets, which
  # have no port to parse).
  # spawn: more Process.spawn options (e.g. rlimit_nofile: 64).
  def initialize(command, env: {}, chdir: ROOT, ready: nil, spawn: {})
    @ready = ready
    @output = +""
    @reader, writer = IO.pipe
    @pid = Process.spawn(GcStressMode.server_env.merge(env), *command,
                         chdir: chdir, out: writer, err: writer, pgroup: true, in: File::NULL, **spawn)
    writer.close
    @status = nil
  end

  def wait_until_listening(timeout: BOOT_TIMEOUT)
    timeout = GcStressMode.scale(timeout)
    return wait_for_output(@ready, timeout: timeout) || raise("not ready:\n#{@output}") if @ready

    match = wait_for_listening_line(now + timeout, timeout)
    host = match[1]
    @host = host == "0.0.0.0" ? "127.0.0.1" : host
    @port = Integer(match[2])
    self
  end

  def wait_for_listening_line(deadline, timeout)
    until (match = @output.match(LISTENING))
      raise "server exited before listening:\n#{@output}" if read_some(deadline).nil? && exited?
      raise "server not listening after #{timeout}s:\n#{@output}" if now > deadline
    end
    match
  end

  # Reads more output until `pattern` appears (or the deadline passes).
  def wait_for_output(pattern, timeout: 10)
    timeout = GcStressMode.scale(timeout)
    deadline = now + timeout
    read_some(deadline) until @output.match?(pattern) || now > deadline || (exited? && !readable?)
    @output.match?(pattern)
  end

  # Reads until `pattern` has matched `count` times in all output so far.
  def wait_for_matches(pattern, count, timeout: 10)
    timeout = GcStressMode.scale(timeout)
    deadline = now + timeout
    read_some(deadline) until @output.scan(pattern).size >= count || now > deadline || (exited? && !readable?)
    @output.scan(pattern).size >= count
  end

  def signal(name)
    Process.kill(name, @pid)
  end

  # Waits for the process to exit; returns its Process::Status or nil.
  def wait(timeout: 10)
    timeout = GcStressMode.scale(timeout)
    deadline = now + timeout
    until exited?
      return nil if now > deadline

      read_some(now + 0.05)
    end
    drain
    @status
  end

  # Graceful stop, then KILL if it does not go; always reaps the process.
  def stop(signal = "TERM", timeout: 10)
    return @status if exited?

    signal(signal)
    wait(timeout: timeout) || kill
  end

  def kill
    return @status if exited?

    Process.kill("KILL", @pid)
    _, @status = Process.wait2(@pid)
    drain
    @status
  rescue Errno::ESRCH, Errno::ECHILD
    @status
  end

  def exited?
    return true if @status

    waited, status = Process.wait2(@pid, Process::WNOHANG)
    @status = status if waited
    !@status.nil?
  end

  def url(path = "/")
    "http://#{@host}:#{@port}#{path}"
  end

  private

  def readable?
    IO.select([@reader], nil, nil, 0)
  end

  # Reads what is there before the deadline; nil at EOF.
  def read_some(deadline)
    wait = [deadline - now, 0.01].max
    return "" unless IO.select([@reader], nil, nil, [wait, 0.2].min)

    chunk = @reader.read_nonblock(65_536, exception: false)
    return nil if chunk.nil?

    @output << chunk if chunk.is_a?(String)
    chunk
  end

  def drain
    loop do
      chunk = @reader.read_nonblock(65_536, exception: false)
      break unless chunk.is_a?(String)

      @output << chunk
    end
  end

  def now
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end
end
