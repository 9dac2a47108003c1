# frozen_string_literal: true

require "open3"

RSpec.describe "the butterflies command" do
  def run_cli(*args, chdir: ServerHelpers::ROOT)
    out, err, status = Open3.capture3(*butterflies_command(*args), chdir: chdir, stdin_data: "")
    [out, err, status]
  end

  it "refuses an unknown flag with one readable line and status 2" do
    _out, err, status = run_cli("--no-such-flag")
    expect(status.exitstatus).to eq(2)
    expect(err).to eq("butterflies: invalid option: --no-such-flag (see butterflies --help)\n")
  end

  context "with PORT in the environment (a PaaS's Procfile)" do
    it "listens on it when no port is given anywhere" do
      port = free_port
      server = ServerProcess.start(butterflies_command(ServerHelpers::APP), env: { "PORT" => port.to_s })
      (@servers ||= []) << server
      expect(server.output).to include("Listening on http://0.0.0.0:#{port}")
      expect(Net::HTTP.get(URI("http://127.0.0.1:#{port}/"))).to eq("Hello world!")
    end

    it "says it is not used when the command line binds elsewhere", stress: false do
      server = start_butterflies(env: { "PORT" => free_port.to_s })
      expect(server.output).to match(/^\* PORT=\d+ not used: the command line gives the binds$/)
    end

    it "refuses one that is not a port, in one line" do
      _out, err, status = Open3.capture3({ "PORT" => "http" }, *butterflies_command(ServerHelpers::APP))
      expect(status.exitstatus).to eq(2)
      expect(err).to eq("butterflies: PORT must be a port number from 0 to 65535, got \"http\"\n")
    end
  end

  it "refuses a bad thread count" do
    _out, err, status = run_cli("-t", "zero", ServerHelpers::APP)
    expect(status.exitstatus).to eq(2)
    expect(err).to eq("butterflies: --threads must be a whole number from 0 to 4611686018427387904, got \"zero\"\n")
  end

  it "refuses a negative idle spin and takes 0 to turn it off" do
    _out, err, status = run_cli("--idle-spin", "-5", ServerHelpers::APP)
    expect(status.exitstatus).to eq(2)
    expect(err).to start_with("butterflies: --idle-spin must be a whole number from 0 to 4611686018427387904, got \"-5\"")
    out, _err, status = run_cli("--idle-spin", "0", "--dry-run", ServerHelpers::APP)
    expect(status.exitstatus).to eq(0)
    expect(out).to include("idle_spin: 0\n")
  end

  {
    %w[--idle-timeout 1e30] => "--idle-timeout must be a number of seconds above 0 and at most 86400, got 1.0e+30",
    %w[--header-timeout 0] => "--header-timeout must be a number of seconds above 0 and at most 86400, got 0.0",
    %w[--request-timeout -1] => "--request-timeout must be a number of seconds above 0 and at most 86400, got -1.0",
    %w[--queue-depth 0] => "--queue-depth must be a whole number from 1 to 4611686018427387904, got \"0\"",
    %w[-w two] => "--workers must be a whole number from 0 to 256, got \"two\"",
    %w[--request-hard-timeout 5] => "request_hard_timeout needs cluster mode (workers >= 1)"
  }.each do |args, message|
    it "refuses #{args.join(' ')} with one line and status 2, before binding" do
      _out, err, status = run_cli(*args, "-b", "tcp://127.0.0.1:0", ServerHelpers::APP)
      expect(status.exitstatus).to eq(2)
      expect(err.lines.size).to eq(1)
      expect(err).to start_with("butterflies: #{message}")
    end
  end

  it "takes shutdown timeout 0 (do not wait)" do
    out, _err, status = run_cli("--shutdown-timeout", "0", "--dry-run", ServerHelpers::APP)
    expect(status.exitstatus).to eq(0)
    expect(out).to include("shutdown_timeout: 0.0\n")
  end

  it "says how to build the extension when it is missing (a path gem Bundler did not build)" do
    Dir.mktmpdir do |dir|
      require "fileutils"
      FileUtils.cp_r(File.join(ServerHelpers::ROOT, "lib"), dir)
      FileUtils.rm_f(Dir[File.join(dir, "lib/butterflies/butterflies.*")])
      # --disable-gems: an installed butterflies gem must not supply the
      # extension this checkout lacks.
      out = IO.popen(ServerHelpers::UNBUNDLED, [RbConfig.ruby, "--disable-gems", "-I#{dir}/lib", "-e", 'require "butterflies"'],
                     err: %i[child out], &:read)
      expect(out).to include("the Butterflies extension is not built: run `rake compile` in #{dir}")
    end
  end

  it "says when the rackup file is missing" do
    _out, err, status = run_cli("missing.ru")
    expect(status.exitstatus).to eq(1)
    expect(err).to eq("butterflies: no rackup file missing.ru (name one, or run from the app's directory)\n")
  end

  it "reports a syntax error in config.ru in one line" do
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "config.ru"), "run ->(env) { [200, {}, [\n")
      _out, err, status = run_cli(chdir: dir)
      expect(status.exitstatus).to eq(1)
      expect(err.lines.size).to eq(1)
      expect(err).to start_with("butterflies: cannot load config.ru: SyntaxError:")
    end
  end

  it "reports a port already in use" do
    holder = TCPServer.new("127.0.0.1", 0)
    port = holder.addr[1]
    _out, err, status = run_cli("-b", "tcp://127.0.0.1:#{port}", ServerHelpers::APP)
    expect(status.exitstatus).to eq(1)
    expect(err).to match(/\Abutterflies: 127\.0\.0\.1:#{port}: Address already in use.*\n\z/)
  ensure
    holder&.close
  end

  it "prints its version and help" do
    out, _err, status = run_cli("-v")
    expect([out, status.exitstatus]).to eq(["butterflies #{Butterflies::VERSION}\n", 0]) if defined?(Butterflies::VERSION)
    expect(out).to match(/\Abutterflies \d+\.\d+\.\d+\n\z/)
    help, _err, status = run_cli("--help")
    expect(status.exitstatus).to eq(0)
    expect(help).to include("--bind", "--port", "--threads", "--io-threads", "--environment", "--quiet")
  end

  it "boots with a banner naming version, ruby, address, threads and pid" do
    server = start_butterflies("-t", "3", "--io-threads", "1")
    expect(server.wait_for_output(/Use Ctrl-C to stop\n/)).to be(true)
    expect(server.output).to include("Butterflies", "ruby #{RUBY_VERSION}", "pid #{server.pid}",
                                     "threads: 3 app, 1 io", "Ctrl-C")
  end

  it "finishes a request in flight on SIGTERM and exits 0", stress: false do
    server = start_butterflies
    slow = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) }
    expect(server.wait_for_output(/app: sleeping 1.0/)).to be(true)
    server.signal("TERM")
    response = slow.value
    expect(response.code).to eq("200")
    expect(response.body).to eq("slept 1.0")
    expect(response["Connection"]).to eq("close")
    status = server.wait(timeout: 10)
    expect(status&.exitstatus).to eq(0)
    expect { TCPSocket.new(server.host, server.port) }.to raise_error(Errno::ECONNREFUSED)
  end

  it "stops on SIGINT (Ctrl-C) with status 0", stress: false do
    server = start_butterflies
    server.signal("INT")
    expect(server.wait(timeout: 10)&.exitstatus).to eq(0)
    expect(server.output).to include("Goodbye")
  end
end
