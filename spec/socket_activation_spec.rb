# frozen_string_literal: true

require "json"
require "net/http"
require "socket"

# systemd socket activation, with the real launcher from Debian's systemd
# package: `systemd-socket-activate` binds the sockets, waits for the first
# connection, then execs the server with LISTEN_FDS/LISTEN_PID set (the
# process the spec started becomes the server: same pid).
RSpec.describe "socket activation", timeout: 180 do
  include ClusterHelpers

  let(:launcher) { program("systemd-socket-activate") }

  around do |example|
    Dir.mktmpdir do |dir|
      @dir = dir
      example.run
    ensure
      @server&.kill
    end
  end

  # What the app saw: its pid and the activation variables.
  let(:rackup) do
    File.join(@dir, "config.ru").tap do |path|
      File.write(path, <<~RUBY)
        require "json"
        run lambda { |_env|
          seen = { "pid" => Process.pid, "listen_fds" => ENV["LISTEN_FDS"], "listen_pid" => ENV["LISTEN_PID"] }
          [200, { "content-type" => "application/json" }, [JSON.generate(seen)]]
        }
      RUBY
    end
  end

  # The launcher holding `listens` (addresses as systemd-socket-activate
  # takes them), to exec butterflies with `args`. The launcher passes only
  # the variables named with -E.
  def activate(listens, *args)
    env = GcStressMode.server_env
    command = [launcher, *listens.flat_map { |l| ["-l", l] }, "--fdname=web",
               *launcher_env_flags(env),
               *butterflies_command(*args, rackup)]
    @server = ServerProcess.new(command, env: env)
    raise "#{launcher} did not listen:\n#{@server.output}" unless @server.wait_for_matches(/ as \d+\./, listens.size)

    @server
  end

  def get(port, path = "/")
    JSON.parse(Net::HTTP.get(URI("http://127.0.0.1:#{port}#{path}")))
  end

  def get_unix(path)
    socket = UNIXSocket.new(path)
    socket.write("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    JSON.parse(socket.read.split("\r\n\r\n", 2).last)
  ensure
    socket&.close
  end

  it "serves the passed sockets instead of its default bind, across USR2, and leaves systemd's socket file alone",
     stress: false do
    port = free_port
    path = File.join(@dir, "app.sock")
    server = activate(["127.0.0.1:#{port}", path], "-t", "2")
    # The first request is made before the server exists: systemd holds the
    # socket, and the connection waits in its backlog until the server runs.
    first = Thread.new { get(port) }
    server.wait_until_listening
    seen = first.value
    expect(seen).to eq("pid" => server.pid, "listen_fds" => nil, "listen_pid" => nil)
    expect(server.output).to include("* Listening on http://127.0.0.1:#{port}", "* Listening on unix://#{path}")
    expect(server.output).not_to include("9292")
    expect(get_unix(path)["pid"]).to eq(server.pid)

    server.signal("USR2") # a hot restart execs again; the sockets go along
    expect(server.wait_for_matches("* Listening on unix://#{path}", 2, timeout: 60)).to be(true), server.output
    expect(get(port)["pid"]).to eq(server.pid)
    expect(get_unix(path)["pid"]).to eq(server.pid)
    expect(server.output).not_to include("9292")

    expect(server.stop&.success?).to be(true), server.output
    expect(File.socket?(path)).to be(true), "the socket systemd made was removed"
  end

  it "shares one passed socket between the workers and keeps it through a hot restart", stress: false do
    port = free_port
    server = activate(["127.0.0.1:#{port}"], "-w", "2", "-t", "2", "--io-threads", "1")
    first = Thread.new { get(port) }
    wait_for_ready_workers(server, 2)
    server.wait_until_listening
    first.value
    workers = ready_workers(server).values

    # Fresh connections: both workers accept from the one queue.
    served = Array.new(200) { get(port)["pid"] }
    expect(served.uniq.sort).to eq(workers.sort)

    successes, failures, stop = fresh_connection_clients(server)
    wait_until(message: "requests before the restart") { successes.size >= 20 }
    server.signal("USR2")
    expect(server.wait_for_matches(/\* Listening on http:/, 2, timeout: 60)).to be(true), server.output
    wait_for_ready_workers(server, 4, timeout: 60)
    before = successes.size
    wait_until(message: "requests after the restart") { successes.size >= before + 20 }
    stop.call
    expect(failures.size).to eq(0), failures.size.times.map { failures.pop }.uniq.inspect

    fresh = ready_workers(server).values
    expect(fresh & workers).to eq([])
    expect(Array.new(50) { get(port)["pid"] }.uniq - fresh).to eq([])
    expect(server.output.scan(/cluster master pid (\d+)/).flatten.uniq).to eq([server.pid.to_s])
  end
end
