# frozen_string_literal: true

require "json"
require "open3"
require "tmpdir"

# The control server: /stats in Puma's shape, /metrics in Prometheus' text
# format (checked by promtool, and scraped by a real Prometheus), with
# token authentication.
RSpec.describe "the control server", timeout: 180 do
  def token
    "s3cret"
  end

  def control_port
    TCPServer.open("127.0.0.1", 0) { |s| s.addr[1] }
  end

  def control_get(port, path, headers = {})
    Net::HTTP.start("127.0.0.1", port, read_timeout: 10) { |h| h.get(path, headers) }
  end

  def stats(port)
    JSON.parse(control_get(port, "/stats?token=#{token}").body)
  end

  # /stats once the server has counted `count` answered requests: a request
  # is counted when its connection is handed back, just after the client
  # got the response.
  def counted(port, count)
    wait_until(message: "#{count} requests counted") do
      s = stats(port)
      s if s["butterflies"]["totals"]["requests_2xx"] == count
    end
  end

  def start_with_control(*args, workers: nil)
    port = control_port
    flags = ["--control-url", "tcp://127.0.0.1:#{port}", "--control-token", token, *args]
    server = workers ? start_cluster(*flags, workers: workers) : start_butterflies("-t", "2", *flags)
    [server, port]
  end

  it "refuses a missing or wrong token with 401 and a Bearer challenge" do
    _server, port = start_with_control
    [control_get(port, "/stats"), control_get(port, "/stats?token=wrong"),
     control_get(port, "/metrics", "Authorization" => "Bearer wrong")].each do |response|
      expect(response.code).to eq("401")
      expect(response["www-authenticate"]).to start_with("Bearer")
    end
    expect(control_get(port, "/stats", "Authorization" => "Bearer #{token}").code).to eq("200")
    expect(control_get(port, "/nothing?token=#{token}").code).to eq("404")
  end

  it "refuses a TCP control server without a token" do
    out, err, status = Open3.capture3(*butterflies_command("--control-url", "tcp://127.0.0.1:1",
                                                           "-b", "tcp://127.0.0.1:0", ServerHelpers::APP))
    expect(status.exitstatus).to eq(2), out
    expect(err).to include("a TCP control server needs a control_token")
  end

  it "needs no token on a Unix socket" do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "control.sock")
      server = start_butterflies("-t", "2", "--control-url", "unix://#{path}")
      Net::HTTP.get(URI(server.url("/")))
      fetch = lambda do
        UNIXSocket.open(path) do |s|
          s.write("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
          s.read
        end
      end
      expect(fetch.call).to start_with("HTTP/1.1 200 OK")
      wait_until(message: "the request counted") do
        JSON.parse(fetch.call.split("\r\n\r\n", 2).last)["requests_count"] == 1
      end
    end
  end

  it "reports single mode in Puma's single-mode shape" do
    server, port = start_with_control
    3.times { Net::HTTP.get(URI(server.url("/"))) }
    s = counted(port, 3)
    expect(s.keys).to include("started_at", "backlog", "running", "pool_capacity", "max_threads",
                              "requests_count", "busy_threads")
    expect(s["requests_count"]).to eq(3)
    expect(s["running"]).to eq(2)
  end

  it "reports each worker in Puma's cluster shape, adding up to what the clients sent" do
    server, port = start_with_control(workers: 2)
    threads = Array.new(4) { Thread.new { 25.times { Net::HTTP.get(URI(server.url("/"))) } } }
    threads.each(&:join)
    s = counted(port, 100)
    expect(s.keys).to include("started_at", "workers", "phase", "booted_workers", "old_workers", "worker_status")
    expect(s["workers"]).to eq(2)
    expect(s["booted_workers"]).to eq(2)
    s["worker_status"].each do |w|
      expect(w.keys).to include("started_at", "pid", "index", "phase", "booted", "last_checkin", "last_status")
      expect(w["last_status"].keys).to include("backlog", "running", "pool_capacity", "max_threads", "requests_count")
    end
    counts = s["worker_status"].map { |w| w["last_status"]["requests_count"] }
    expect(counts.sum).to eq(100)
    expect(s["butterflies"]["totals"]["requests_2xx"]).to eq(100)
  end

  it "keeps a killed worker's requests in the totals", stress: false do
    server, port = start_with_control(workers: 2)
    20.times { Net::HTTP.get(URI(server.url("/"))) }
    counted(port, 20)
    victim = ready_workers(server)[0]
    Process.kill("KILL", victim)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 3, timeout: 30)).to be(true)
    s = stats(port)
    expect(s["butterflies"]["totals"]["requests_2xx"]).to eq(20)
    expect(s["butterflies"]["restarts"]["crash"]).to eq(1)
  end

  it "keeps listening, and keeps its counts, across a hot restart (USR2)", stress: false do
    server, port = start_with_control(workers: 2)
    12.times { Net::HTTP.get(URI(server.url("/"))) }
    counted(port, 12)
    server.signal("USR2")
    expect(server.wait_for_matches(/Listening on/, 2, timeout: 30)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, 4, timeout: 30)).to be(true)
    3.times { Net::HTTP.get(URI(server.url("/"))) }
    s = counted(port, 15)
    expect(s["butterflies"]["restarts"]["hot"]).to eq(2)
    expect(s["worker_status"].map { |w| w["pid"] }).to match_array(ready_workers(server).values)
  end

  it "measures queue time from a trusted proxy's X-Request-Start" do
    server, port = start_with_control("--trust-request-start")
    sent = ((Time.now.to_f - 0.25) * 1000).round # the proxy took it 250 ms ago, in ms
    Net::HTTP.start(server.host, server.port) { |h| h.get("/", "X-Request-Start" => "t=#{sent}") }
    Net::HTTP.get(URI(server.url("/"))) # no header: no sample
    counted(port, 2)
    metrics = control_get(port, "/metrics?token=#{token}").body
    expect(metrics[/^butterflies_proxy_queue_seconds_count\{worker="single"\} (\d+)$/, 1]).to eq("1")
    expect(metrics[/^butterflies_proxy_queue_seconds_sum\{worker="single"\} (\S+)$/, 1].to_f).to be >= 0.25
    expect(metrics[/^butterflies_queue_seconds_count\{worker="single"\} (\d+)$/, 1]).to eq("2")
  end

  it "collects each worker's thread backtraces and GC statistics, labelled" do
    server, port = start_with_control(workers: 2)
    sleeper = Thread.new { Net::HTTP.get(URI(server.url("/sleep?s=3"))) }
    expect(server.wait_for_output(/app: sleeping 3/)).to be(true)
    workers = ready_workers(server)
    traces = JSON.parse(control_get(port, "/thread-backtraces?token=#{token}").body)
    expect(traces["master"]["pid"]).to eq(server.pid)
    expect(traces["workers"].map { |w| [w["index"], w["pid"]] }).to eq(workers.sort.to_a)
    traces["workers"].each do |w|
      names = w["thread_backtraces"].map { |t| t["name"] }
      expect(names).to include("main", "butterflies-app-0", "butterflies-app-1", "butterflies-inquiries")
    end
    # The sleeping request shows in the one worker that took it.
    in_app = traces["workers"].select do |w|
      w["thread_backtraces"].any? { |t| t["backtrace"].any? { |line| line.include?("app.ru") && line.include?("sleep") } }
    end
    expect(in_app.size).to eq(1)
    gc = JSON.parse(control_get(port, "/gc-stats?token=#{token}").body)
    expect(gc["master"]["gc_stats"]["count"]).to be_a(Integer)
    expect(gc["workers"].map { |w| w["gc_stats"]["count"] }).to all(be_a(Integer))
    sleeper.join
  end

  it "says which worker did not answer in time, and is not misled by its late answer", stress: false do
    server, port = start_with_control(workers: 2)
    stopped = ready_workers(server)[1]
    Process.kill("STOP", stopped)
    begin
      gc = JSON.parse(control_get(port, "/gc-stats?token=#{token}&timeout=0.5").body)
      expect(gc["workers"].map { |w| w.key?("gc_stats") }).to eq([true, false])
      expect(gc["workers"][1]).to include("pid" => stopped, "error" => "no answer within 0.5s")
    ensure
      Process.kill("CONT", stopped)
    end
    # Its answer to the first question arrives late; the next question
    # gets the answer to itself.
    wait = GcStressMode.scale(5)
    2.times do
      traces = JSON.parse(control_get(port, "/thread-backtraces?token=#{token}&timeout=#{wait}").body)
      expect(traces["workers"].map { |w| w["thread_backtraces"]&.first&.keys }).to all(eq(%w[name status backtrace]))
    end
    expect(control_get(port, "/gc-stats?token=#{token}&timeout=soon").code).to eq("400")
  end

  it "counts open and kept-alive connections, and every request's GVL wait" do
    server, port = start_with_control
    clients = Array.new(3) { Net::HTTP.start(server.host, server.port) }
    clients.each { |c| expect(c.get("/").code).to eq("200") }
    s = wait_until(message: "3 kept-alive connections") do
      s = stats(port)
      s if s["keep_alive"] == 3
    end
    expect(s["connections"]).to eq(3)
    expect([s["min_threads"], s["max_threads"]]).to eq([2, 2])
    clients.each(&:finish)
    wait_until(message: "the connections to close") { stats(port).values_at("keep_alive", "connections") == [0, 0] }
    metrics = control_get(port, "/metrics?token=#{token}").body
    count = ->(name) { metrics[/^butterflies_#{name}_seconds_count\{worker="single"\} (\d+)$/, 1] }
    expect(count.call("gvl_wait")).to eq(count.call("app"))
    expect(count.call("app")).to eq("3")
  end

  # The example above reads /metrics under GC.stress; this one adds two
  # real programs and 12 s there.
  it "serves /metrics that promtool accepts and a real Prometheus scrapes", stress: false do
    server, port = start_with_control(workers: 2)
    10.times { Net::HTTP.get(URI(server.url("/"))) }
    counted(port, 10)
    metrics = control_get(port, "/metrics?token=#{token}").body
    expect(metrics).to include('butterflies_queue_seconds_bucket{worker="0",le="+Inf"}')
    out, status = Open3.capture2e("promtool", "check", "metrics", stdin_data: metrics)
    expect(status).to be_success, out

    Dir.mktmpdir do |dir|
      web = control_port
      File.write(File.join(dir, "prometheus.yml"), <<~YAML)
        global: { scrape_interval: 1s }
        scrape_configs:
          - job_name: butterflies
            authorization: { credentials: #{token} }
            static_configs: [{ targets: ["127.0.0.1:#{port}"] }]
      YAML
      prometheus = ServerProcess.new(["prometheus", "--config.file=#{dir}/prometheus.yml",
                                      "--storage.tsdb.path=#{dir}/data", "--web.listen-address=127.0.0.1:#{web}"],
                                     ready: /Server is ready to receive web requests/)
      begin
        prometheus.wait_until_listening(timeout: 60)
        query = lambda do |q|
          body = Net::HTTP.get(URI("http://127.0.0.1:#{web}/api/v1/query?query=#{URI.encode_www_form_component(q)}"))
          JSON.parse(body).dig("data", "result", 0, "value", 1)
        end
        total = wait_until(timeout: 30, message: "Prometheus to scrape the request counter") do
          query.call('sum(butterflies_requests_total{code="2xx"})')
        end
        expect(total.to_i).to eq(10)
        bucket = query.call('sum(butterflies_queue_seconds_bucket{le="+Inf"})')
        expect(bucket.to_i).to eq(10)
      ensure
        prometheus.stop
      end
    end
  end

  it "makes its Unix socket 0600 whatever the umask (or the mode asked), and never takes over a live one", stress: false do
    Dir.mktmpdir do |dir|
      path = File.join(dir, "control.sock")
      start_butterflies("-t", "2", "--control-url", "unix://#{path}", spawn: { umask: 0 })
      expect(File.stat(path).mode & 0o777).to eq(0o600)
      _out, err, status = Open3.capture3(*butterflies_command("--control-url", "unix://#{path}",
                                                              "-b", "tcp://127.0.0.1:0", ServerHelpers::APP))
      expect(status.exitstatus).not_to eq(0)
      expect(err).to include("another server is listening there")
      expect(UNIXSocket.open(path) { |s| s.write("GET /stats HTTP/1.1\r\n\r\n") && s.read }).to start_with("HTTP/1.1 200")

      shared = File.join(dir, "shared.sock")
      start_butterflies("-t", "2", "--control-url", "unix://#{shared}?mode=0660", spawn: { umask: 0 })
      expect(File.stat(shared).mode & 0o777).to eq(0o660)
    end
  end
end
