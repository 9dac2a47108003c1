# frozen_string_literal: true

require "net/http"
require "socket"

# Rolling deploys: /ready and /live on the control server, and
# drain_delay, driven as a load balancer with health checks drives them.
RSpec.describe "readiness and draining", timeout: 180 do
  include ClusterHelpers

  def probe(port, path)
    Net::HTTP.start("127.0.0.1", port, read_timeout: 5) { |h| h.get(path) }
  end

  # Keep-alive clients sending requests, as a load balancer forwards them,
  # until it sees /ready fail (then each finishes the request it is on and
  # sends no more). Returns what they saw.
  def balanced_load(server, control, clients: 4)
    seen = { ok: 0, failed: [], closing: 0 }
    lock = Mutex.new
    unready = false
    threads = Array.new(clients) do
      Thread.new do
        Net::HTTP.start(server.host, server.port, read_timeout: 10) do |http|
          until unready
            outcome = request(http)
            lock.synchronize { tally(seen, outcome) }
          end
        end
      end
    end
    yield -> { unready = probe(control, "/ready").code != "200" }
    threads.each(&:join)
    seen
  end

  # One request: [status or error, whether it closed the connection].
  def request(http)
    response = http.get("/")
    [response.code, response["connection"] == "close"]
  rescue StandardError => e
    [e.class.name, true]
  end

  def tally(seen, (code, closing))
    code == "200" ? seen[:ok] += 1 : seen[:failed] << code
    seen[:closing] += 1 if closing && code == "200"
  end

  it "answers /ready 503 while draining, keeps serving with Connection: close, and loses no request",
     stress: false do
    control = free_port
    delay = 2
    server = start_cluster("--drain-delay", delay.to_s, "--control-url", "tcp://127.0.0.1:#{control}",
                           "--control-token", "t0ken")
    wait_until(message: "/ready 200") { probe(control, "/ready").body == "ready\n" }
    expect(probe(control, "/live").code).to eq("200")

    termed_at = nil
    seen = balanced_load(server, control) do |check|
      wait_until(message: "requests before TERM") { Net::HTTP.get(URI(server.url("/"))) == "Hello world!" }
      termed_at = now
      server.signal("TERM")
      wait_until(timeout: 10, message: "/ready to say 503") { check.call }
    end
    drained = probe(control, "/ready")
    expect([drained.code, drained.body]).to eq(%W[503 draining\n])
    expect(probe(control, "/live").code).to eq("200")
    # Still accepting: a new connection is served during the delay.
    expect(Net::HTTP.get_response(URI(server.url("/")))["connection"]).to eq("close")

    expect(seen[:failed]).to eq([])
    expect(seen[:ok]).to be > 0
    expect(seen[:closing]).to be > 0
    expect(server.wait(timeout: 30)&.exitstatus).to eq(0), server.output
    expect(now - termed_at).to be >= delay
    expect(server.output).to include("Draining for #{delay.to_f}s")
  end

  it "stops at once on a second TERM while draining, in single mode", stress: false do
    control = free_port
    server = start_butterflies("--drain-delay", "60", "--control-url", "tcp://127.0.0.1:#{control}",
                               "--control-token", "t0ken")
    wait_until(message: "/ready 200") { probe(control, "/ready").code == "200" }
    server.signal("TERM")
    wait_until(message: "draining") { probe(control, "/ready").body == "draining\n" }
    response = Net::HTTP.get_response(URI(server.url("/")))
    expect([response.code, response["connection"]]).to eq(%w[200 close])
    server.signal("TERM")
    expect(server.wait(timeout: 20)&.exitstatus).to eq(0), server.output
  end

  it "says 503 booting while a preloaded app loads" do
    Dir.mktmpdir do |dir|
      gate = File.join(dir, "gate")
      control = free_port
      server = start_butterflies("-w", "1", "--preload", "--control-url", "tcp://127.0.0.1:#{control}",
                                 "--control-token", "t0ken",
                                 rackup: File.join(ServerHelpers::ROOT, "spec/fixtures/slow_boot.ru"),
                                 env: { "SLOW_BOOT_GATE" => gate }, ready: /app: loading slowly/)
      booting = wait_until(message: "the control server") do
        probe(control, "/ready")
      rescue Errno::ECONNREFUSED
        nil
      end
      expect([booting.code, booting.body]).to eq(%W[503 booting\n])
      File.write(gate, "")
      wait_until(timeout: 30, message: "ready") { probe(control, "/ready").code == "200" }
      expect(server.wait_for_output(ClusterHelpers::WORKER_READY)).to be(true), server.output
    end
  end
end
