# frozen_string_literal: true

# --inline-io: no IO threads; the app threads poll the IO loops themselves.
RSpec.describe "inline IO loops (--inline-io)" do
  # /hold waits until /release has been answered (or 10 s pass): a fast
  # request that queued behind it would never come, and /hold would say so.
  hold_source = <<~RUBY
    require "timeout"
    released = Queue.new
    run lambda { |env|
      case env["PATH_INFO"]
      when "/hold"
        warn "app: holding"
        body = begin
          Timeout.timeout(10) { released.pop } && "released"
        rescue Timeout::Error
          "never released"
        end
        [200, { "content-type" => "text/plain" }, [body]]
      when "/release"
        [200, { "content-type" => "text/plain" }, ["ok"]].tap { released << true }
      when "/boom" then raise "boom"
      else
        [200, { "content-type" => "text/plain" }, [env["REQUEST_METHOD"] + " " + env["rack.input"].read]]
      end
    }
  RUBY

  define_method(:hold_app) do
    File.join(Dir.mktmpdir("inline-io"), "config.ru").tap { |path| File.write(path, hold_source) }
  end

  it "serves keep-alive, bodies and app errors, and says it is inline" do
    server = start_butterflies("--inline-io", "-t", "2", "--io-threads", "1", rackup: hold_app)
    expect(server.output).to include("threads: 2 app, 1 inline io loops")
    Net::HTTP.start(server.host, server.port) do |http|
      20.times do |i|
        response = http.post("/echo", "body #{i}")
        expect([response.code, response.body]).to eq(["200", "POST body #{i}"])
      end
      expect(http.get("/boom").code).to eq("500")
      expect(http.get("/").body).to eq("GET ")
    end
  end

  it "answers a request on the loop whose poller is busy in another" do
    # One loop and two app threads: while one thread is in /hold, the
    # loop is let go, and /release (on the same loop) is served by the
    # other thread.
    server = start_butterflies("--inline-io", "-t", "2", "--io-threads", "1", rackup: hold_app)
    held = Thread.new { Net::HTTP.get(URI(server.url("/hold"))) }
    expect(server.wait_for_output(/app: holding/)).to be(true)
    released = Net::HTTP.get(URI(server.url("/release")))
    expect([released, held.value]).to eq(%w[ok released])
  end

  # The GC.stress pass runs the two examples above; the rest repeat what
  # the default shape's specs already run under it.
  it "finishes a request in flight on TERM, then exits", stress: false do
    server = start_butterflies("--inline-io", "-t", "2", "--io-threads", "1")
    sleeper = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) }
    expect(server.wait_for_output(/app: sleeping 1.0/)).to be(true)
    server.signal("TERM")
    response = sleeper.value
    expect([response.code, response.body]).to eq(["200", "slept 1.0"])
    expect(server.wait(timeout: 10)).to be_success
  end

  it "grows the pool while requests wait in a loop nobody polls", stress: false do
    server = start_butterflies("--inline-io", "-t", "2:8", "--io-threads", "1")
    sleepers = Array.new(6) { Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=2"))) } }
    expect(server.wait_for_matches(/app: sleeping 2.0/, 6, timeout: 10)).to be(true)
    expect(sleepers.map { |t| t.value.code }).to eq(["200"] * 6)
  end

  it "serves in cluster mode", stress: false do
    server = start_cluster("--inline-io", workers: 2)
    wait_for_ready_workers(server, 2)
    pids = Array.new(20) { Net::HTTP.get(URI(server.url("/pid"))) }
    expect(pids).to all(match(/\A\d+\z/))
    server.signal("TERM")
    expect(server.wait(timeout: 20)).to be_success
  end
end
