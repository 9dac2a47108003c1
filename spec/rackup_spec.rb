# frozen_string_literal: true

require "open3"

# The Rack handler: `rackup -s butterflies` (rackup 2 on Rack 3, rack's own
# rackup on Rack 2), with config/butterflies.rb and Rails' environment
# conventions. `rails server -u butterflies` is in examples_spec.rb.
RSpec.describe "rackup -s butterflies", timeout: 120 do
  def rackup(*args, env: {}, chdir: ServerHelpers::ROOT, app: ServerHelpers::APP, ready: nil)
    # -E none: no middleware of rackup's own (its development Lint would wrap
    # the fixture's).
    command = [*ServerHelpers::RUBY, Stack.rackup_bin, "-s", "butterflies", "-E", "none", *args, app]
    server = ServerProcess.start(command, env: env, chdir: chdir, ready: ready)
    (@servers ||= []) << server
    server
  end

  it "serves the app through the real rackup and stops on SIGINT" do
    server = rackup("-o", "127.0.0.1", "-p", "0")
    res = Net::HTTP.get_response(URI(server.url("/")))
    expect(res.body).to eq("Hello world!")
    big = Random.new(7).bytes(256 * 1024)
    echoed = Net::HTTP.start(server.host, server.port) { |h| h.post("/echo", big).body }
    expect(echoed.b == big).to be(true)
    server.signal("INT")
    expect(server.wait(timeout: 10)&.exitstatus).to eq(0)
  end

  it "is found by this Rack's handler registry without a fallback, defining nothing stray" do
    registry = Stack.rack3? ? "Rackup::Handler" : "Rack::Handler"
    script = <<~RUBY
      require "rack"
      require "#{Stack.rack3? ? 'rackup' : 'rack/handler'}"
      handler = #{registry}.get("butterflies")
      p [handler.respond_to?(:run), $LOADED_FEATURES.grep(%r{handler/butterflies}).map { |f| f[%r{\\w+/handler/butterflies}] }]
      p defined?(Rack::Handler::Butterflies) ? :rack_handler : :none
    RUBY
    out = IO.popen([*ServerHelpers::RUBY, "-e", script], err: %i[child out], &:read)
    lines = out.lines
    expect(lines[0]).to eq("[true, [\"#{Stack.rack3? ? 'rackup' : 'rack'}/handler/butterflies\"]]\n"), out
    expect(lines[1]).to eq(Stack.rack3? ? ":none\n" : ":rack_handler\n")
  end

  it "reads config/butterflies.rb, and RAILS_MAX_THREADS and WEB_CONCURRENCY, under the user's flags", stress: false do
    Dir.mktmpdir do |dir|
      FileUtils.mkdir_p(File.join(dir, "config"))
      File.write(File.join(dir, "config/butterflies.rb"), "bind 'tcp://127.0.0.1:0'\nthreads 2\nworker_timeout 30\n")
      env = { "RAILS_MAX_THREADS" => "3", "WEB_CONCURRENCY" => "2" }
      server = rackup(env: env, chdir: dir)
      expect(server.output).to include("workers: 2, each with 3 app")
      expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 2, timeout: 30)).to be(true), server.output
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
      expect(server.stop&.exitstatus).to eq(0)
    end
  end

  it "ends with the CLI's one line and status 2 for a mistake in the config file" do
    Dir.mktmpdir do |dir|
      file = File.join(dir, "butterflies.rb")
      File.write(file, "threads 2\nthreds 4\n")
      command = [*ServerHelpers::RUBY, Stack.rackup_bin, "-s", "butterflies", "-E", "none", "-p", "0", ServerHelpers::APP]
      _out, err, status = Open3.capture3({ "BUTTERFLIES_CONFIG" => file }, *command)
      expect(status.exitstatus).to eq(2)
      expect(err).to eq("butterflies: #{file}:2: unknown option threds\n")
    end
  end

  it "listens on both loopbacks for -o localhost where the host has IPv6, sharing port 0's port", stress: false do
    server = rackup("-o", "localhost", "-p", "0", ready: /Use Ctrl-C to stop/)
    urls = server.output.scan(%r{Listening on (http://\S+)}).flatten
    v6 = Socket.ip_address_list.any?(&:ipv6_loopback?)
    expect(urls.size).to eq(v6 ? 2 : 1), server.output
    port = urls.first[/:(\d+)\z/, 1]
    expect(urls).to all(end_with(":#{port}"))
    # (Ruby 3.1's Net::HTTP sends an unbracketed IPv6 Host, which is
    # invalid; name the host ourselves.)
    urls.each do |url|
      uri = URI(url)
      body = Net::HTTP.start(uri.hostname, uri.port) { |h| h.get("/", "Host" => "localhost").body }
      expect(body).to eq("Hello world!")
    end
  end
end
