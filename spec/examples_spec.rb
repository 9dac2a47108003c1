# frozen_string_literal: true

require "cgi"
require "open3"

# Real apps from examples/: Sinatra and a Rails 6.1 app, booted through
# their own Gemfiles with `bundle exec butterflies`, and Rails also with
# `rails server -u butterflies`.
RSpec.describe "real apps", timeout: 180 do
  def example_dir(name)
    File.join(ServerHelpers::ROOT, "examples", name)
  end

  def bundle_env(name)
    { "BUNDLE_GEMFILE" => File.join(example_dir(name), "Gemfile"), "BUNDLE_SILENCE_ROOT_WARNING" => "1",
      "RUBYOPT" => nil, "RUBYLIB" => nil }
  end

  def boot(name, *command, env: {})
    env = bundle_env(name).merge(env)
    installed = system(env, "bundle", "install", "--local", "--quiet", chdir: example_dir(name), out: File::NULL)
    expect(installed).to be(true)
    server = ServerProcess.start(["bundle", "exec", *command], env: env, chdir: example_dir(name))
    (@servers ||= []) << server
    server
  end

  it "serves the Sinatra example, a form POST included" do
    server = boot("sinatra", "butterflies", "-b", "tcp://127.0.0.1:0")
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello from Sinatra!")
    expect(Net::HTTP.get(URI(server.url("/hello/ada")))).to eq('{"hello":"ada"}')
    res = Net::HTTP.post_form(URI(server.url("/greet")), "name" => "Grace Hopper")
    expect(res.body).to eq("Nice to meet you, Grace Hopper.")
  end

  def post_a_message(server, text)
    Net::HTTP.start(server.host, server.port, read_timeout: 30) do |http|
      form = http.get("/messages/new")
      expect(form.code).to eq("200")
      token = form.body[/name="authenticity_token" value="([^"]+)"/, 1]
      cookie = form["Set-Cookie"].split(";").first
      body = URI.encode_www_form("authenticity_token" => token, "message" => text)
      created = http.post("/messages", body, "Cookie" => cookie, "Content-Type" => "application/x-www-form-urlencoded")
      expect(created.code).to eq("302")
      cookie = created["Set-Cookie"].split(";").first
      http.get("/messages", "Cookie" => cookie).body
    end
  end

  it "serves the Rails example with bundle exec butterflies, CSRF-checked form POST included" do
    server = boot("rails", "butterflies", "-b", "tcp://127.0.0.1:0")
    expect(post_a_message(server, "hello rails")).to eq("Messages: hello rails")
  end

  it "runs cluster mode under rails server -u butterflies: WEB_CONCURRENCY, USR1, HUP, and USR2 refused" do
    server = boot("rails", "bin/rails", "server", "-u", "butterflies", "-b", "127.0.0.1", "-p", "0",
                  env: { "WEB_CONCURRENCY" => "2", "RAILS_MAX_THREADS" => "3" })
    wait_for_ready_workers(server, 2, timeout: 60)
    expect(server.output).to include("workers: 2, each with 3 app")
    expect(post_a_message(server, "from a worker")).to eq("Messages: from a worker")
    server.signal("USR2")
    expect(server.wait_for_output(/USR2 ignored: a hot restart would run/)).to be(true), server.output
    server.signal("USR1")
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 60)).to be(true), server.output
    expect(Net::HTTP.get_response(URI(server.url("/messages/new"))).code).to eq("200")
    server.signal("HUP") # no config file here: a phased restart
    expect(server.wait_for_output(/HUP: no config file to reload; doing a phased restart/)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 6, timeout: 60)).to be(true), server.output
    expect(Net::HTTP.get_response(URI(server.url("/messages/new"))).code).to eq("200")
    server.signal("INT")
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0)
  end

  # 50 at once of a request that holds a database connection for a second.
  # Each app thread past Active Record's pool (5, a generated database.yml)
  # would wait for a connection and answer 500 after 5 s.
  def fifty_reports(server)
    Array.new(50) do
      Thread.new do
        Net::HTTP.start(server.host, server.port, read_timeout: 60) { |http| http.get("/report") }
                 .then { |res| "#{res.code} #{res.body}" }
      end
    end.map(&:value).tally
  end

  it "serves 50 concurrent database requests with the defaults, threads capped at Active Record's pool",
     timing: true do
    server = boot("rails", "bin/rails", "server", "-u", "butterflies", "-b", "127.0.0.1", "-p", "0")
    expect(server.output).to include("* app threads 5-64 capped at 5: Active Record's connection pool")
    expect(fifty_reports(server)).to eq("200 report 42" => 50)
  end

  it "caps each worker's threads too, saying so once" do
    server = boot("rails", "butterflies", "-w", "2", "-t", "8:16", "-b", "tcp://127.0.0.1:0")
    wait_for_ready_workers(server, 2, timeout: 60)
    expect(server.output).to include("workers: 2, each with 8-16 app") # the range asked; the app loads in workers
    expect(server.wait_for_output(/worker 0: app threads 8-16 capped at 5/, timeout: 30)).to be(true), server.output
    expect(server.output.scan("capped at").size).to eq(1)
    expect(Net::HTTP.get(URI(server.url("/report")))).to eq("report 42")
  end

  context "with a config file of its own (BUTTERFLIES_CONFIG)" do
    around do |example|
      Dir.mktmpdir do |dir|
        @config = File.join(dir, "butterflies.rb")
        example.run
      end
    end

    it "gives a bare port the host rails server was given: localhost in development" do
      port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
      File.write(@config, "port #{port}\n")
      server = boot("rails", "bin/rails", "server", "-u", "butterflies", env: { "BUTTERFLIES_CONFIG" => @config })
      expect(server.output).to include("Listening on http://127.0.0.1:#{port}")
      expect(server.output).not_to include("0.0.0.0")
    end

    # The config file the README gives for Rails, taken from the README.
    def readme_rails_config
      readme = File.read(File.join(ServerHelpers::ROOT, "README.md"))
      readme[%r{A `config/butterflies.rb` for a Rails app.*?```ruby\n(.*?)```}m, 1] or raise "no Rails config in the README"
    end

    it "runs the README's Rails config: workers, threads and port from the environment, preloaded" do
      File.write(@config, readme_rails_config)
      port = TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
      env = { "BUTTERFLIES_CONFIG" => @config, "WEB_CONCURRENCY" => "2", "RAILS_MAX_THREADS" => "3",
              "PORT" => port.to_s }
      server = boot("rails", "butterflies", "-C", @config, env: env)
      wait_for_ready_workers(server, 2, timeout: 60)
      expect(server.output).to include("workers: 2, each with 3 app", "app preloaded", "Listening on http://0.0.0.0:#{port}")
      expect(Net::HTTP.get(URI("http://127.0.0.1:#{port}/report"))).to eq("report 42")
    end

    it "ends rails server with the CLI's one line and status 2 for a mistake in it" do
      File.write(@config, "workers 1\nthreads 5, :many\n")
      env = bundle_env("rails").merge("BUTTERFLIES_CONFIG" => @config)
      expect(system(env, "bundle", "install", "--local", "--quiet", chdir: example_dir("rails"), out: File::NULL)).to be(true)
      _out, err, status = Open3.capture3(env, "bundle", "exec", "bin/rails", "server", "-u", "butterflies", "-p", "0",
                                         chdir: example_dir("rails"))
      expect(status.exitstatus).to eq(2)
      expect(err).to eq("butterflies: #{@config}:2: threads must be a whole number from 1 to 4611686018427387904, " \
                        "got :many\n")
    end
  end

  it "serves the Rails example with rails server -u butterflies" do
    server = boot("rails", "bin/rails", "server", "-u", "butterflies", "-b", "127.0.0.1", "-p", "0")
    expect(post_a_message(server, "via rails server")).to eq("Messages: via rails server")
    server.signal("INT")
    expect(server.wait(timeout: 15)&.exitstatus).to eq(0)
  end
end
