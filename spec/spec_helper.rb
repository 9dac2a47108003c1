# frozen_string_literal: true

require "io/wait"
require "json"
require "net/http"
require "socket"
require "timeout"
require "tmpdir"
require_relative "support/server_process"
require_relative "support/cluster_helpers"
require_relative "support/stack"

RSpec.configure do |config|
  config.disable_monkey_patching!
  config.order = :random
  config.filter_run_when_matching :focus unless ENV["CI"]
  # A focused spec must never hide the rest of the suite in CI.
  config.before(:suite) do
    focused = RSpec.world.filtered_examples.values.flatten.any? { |e| e.metadata[:focus] }
    raise "focused specs in CI" if ENV["CI"] && focused
  end
  # No example may hang the suite.
  config.around do |example|
    Timeout.timeout(GcStressMode.scale(example.metadata.fetch(:timeout, 90))) { example.run }
  end
  # Examples that measure time mean nothing when the GC runs at every
  # allocation (spec/support/gc_stress_mode.rb).
  config.filter_run_excluding(timing: true) if GcStressMode.on?
  # Examples that repeat, through another real program, an engine path
  # that others already run under GC.stress, and those about the life of
  # processes (signals, restarts, workers replaced, state files, sockets
  # passed) rather than serving: their servers serve what the serving
  # examples already serve under it. Keeps CI under 30 minutes (the pass
  # took 11 minutes with them).
  config.filter_run_excluding(stress: false) if GcStressMode.on?
end

module ServerHelpers
  ROOT = ServerProcess::ROOT
  RUBY = [RbConfig.ruby, "-I#{File.join(ROOT, 'lib')}"].freeze
  APP = File.join(ROOT, "spec/fixtures/app.ru")
  # What `bundle exec` sets that would carry this checkout's bundle into a
  # child Ruby: BUNDLER_SETUP alone is enough for Ruby 3.3's RubyGems to
  # set the bundle up again, RUBYOPT and RUBYLIB unset or not.
  UNBUNDLED = %w[RUBYOPT RUBYLIB BUNDLE_GEMFILE BUNDLE_BIN_PATH BUNDLER_SETUP BUNDLER_VERSION]
              .to_h { |name| [name, nil] }.freeze

  def butterflies_command(*args)
    [*RUBY, File.join(ROOT, "exe/butterflies"), *args]
  end

  # A port nothing listens on now, for programs that must be told one
  # (systemd-socket-activate, proxies, a control URL); everything else
  # binds port 0. Taken below the kernel's ephemeral range: a port-0 bind
  # (a server's own listener, a client's source port) between this check
  # and the program's bind could otherwise be given the same port, as the
  # trixie pass once saw ("control_url ...: Address already in use").
  def free_port
    below = ephemeral_low
    start = rand(10_000...below)
    (start...below).chain(10_000...start).each do |port|
      return TCPServer.open("127.0.0.1", port) { port }
    rescue Errno::EADDRINUSE, Errno::EACCES
      next
    end
    raise "no free port below #{below}"
  end

  def ephemeral_low
    File.read("/proc/sys/net/ipv4/ip_local_port_range").split.first.to_i.clamp(10_001, 65_535)
  rescue SystemCallError
    32_768
  end

  # The absolute path of a program script/bootstrap installs (proxies and
  # the like live in /usr/sbin, which a user's PATH may lack); raises if
  # it is missing, so a spec that needs it fails instead of passing unseen.
  def program(name)
    dirs = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR) + %w[/usr/sbin /sbin /usr/bin]
    found = dirs.map { |dir| File.join(dir, name) }.find { |path| File.executable?(path) }
    found or raise "#{name} is not installed: run script/bootstrap"
  end

  # systemd-socket-activate passes a program only the variables named
  # with -E: those of `env`, and the suite's own (GC stress mode's).
  def launcher_env_flags(env)
    (env.keys + ENV.keys.grep(/\ABUTTERFLIES_SPEC_/)).uniq.flat_map { |key| ["-E", key] }
  end

  # Starts `butterflies` on a free port; stops it after the example.
  def start_butterflies(*args, rackup: APP, **kwargs)
    server = ServerProcess.start(butterflies_command("-b", "tcp://127.0.0.1:0", *args, rackup), **kwargs)
    (@servers ||= []) << server
    server
  end

  def raw_request(server, bytes, read_until: nil, timeout: 10)
    socket = TCPSocket.new(server.host, server.port)
    socket.write(bytes)
    read_response(socket, read_until: read_until, timeout: timeout)
  ensure
    socket&.close
  end

  # The body of one raw response, chunked or not: Rack 3.1's Lint passes an
  # Array body's to_ary through (Content-Length), Rack 2.2's hides it
  # (chunked). Either framing is correct.
  def body_of(response)
    head, body = response.split("\r\n\r\n", 2)
    return body.to_s unless head.match?(/^transfer-encoding: chunked\r?$/i)

    decoded = +""
    until body.empty?
      size, body = body.split("\r\n", 2)
      break if size.to_i(16).zero?

      decoded << body[0, size.to_i(16)]
      body = body[(size.to_i(16) + 2)..].to_s
    end
    decoded
  end

  # Reads from `socket` until `read_until` matches, or EOF, within timeout.
  def read_response(socket, read_until: nil, timeout: 10)
    timeout = GcStressMode.scale(timeout)
    data = +""
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
    loop do
      break if read_until && data.match?(read_until)

      left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      raise "no complete response within #{timeout}s; got #{data[0, 300].inspect}" if left <= 0
      next unless socket.wait_readable(left)

      chunk = socket.read_nonblock(65_536, exception: false)
      break if chunk.nil?

      data << chunk if chunk.is_a?(String)
    end
    data
  end
end

RSpec.configure do |config|
  config.include ServerHelpers
  config.after { (@servers || []).each(&:kill) }
end
