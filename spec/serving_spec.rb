# frozen_string_literal: true

require "json"
require "time"

RSpec.describe "butterflies serving a config.ru" do
  before(:all) do
    @server = ServerProcess.start(
      [*ServerHelpers::RUBY, File.join(ServerHelpers::ROOT, "exe/butterflies"),
       "-b", "tcp://127.0.0.1:0", "-t", "4", "--io-threads", "2", ServerHelpers::APP]
    )
  end

  after(:all) { @server&.kill }

  let(:server) { @server }

  def http(&block)
    Net::HTTP.start(server.host, server.port, read_timeout: 10, open_timeout: 5, &block)
  end

  it "answers a GET with the app's body, a Content-Length and one Date" do
    res = Net::HTTP.get_response(URI(server.url("/array")))
    expect(res.code).to eq("200")
    expect(res.body).to eq("Hello world!")
    expect(res["Content-Length"]).to eq("12")
    expect(res.get_fields("Date").size).to eq(1)
    expect(Time.httpdate(res["Date"])).to be_within(60).of(Time.now)
  end

  it "builds the basic Rack env" do
    res = Net::HTTP.get_response(URI(server.url("/env?a=1&b=%20")))
    env = JSON.parse(res.body)
    expect(env).to include(
      "REQUEST_METHOD" => "GET", "SCRIPT_NAME" => "", "PATH_INFO" => "/env",
      "QUERY_STRING" => "a=1&b=%20", "SERVER_NAME" => server.host, "SERVER_PORT" => server.port.to_s,
      "SERVER_PROTOCOL" => "HTTP/1.1", "REMOTE_ADDR" => "127.0.0.1", "rack.url_scheme" => "http",
      "rack.version" => [1, 6], "rack.input.binary" => true
    )
    expect(env["HTTP_HOST"]).to eq("#{server.host}:#{server.port}")
  end

  it "puts Content-Type and Content-Length in CONTENT_* only" do
    res = http { |h| h.post("/env", "x=1", "Content-Type" => "application/x-www-form-urlencoded") }
    env = JSON.parse(res.body)
    expect(env).to include("CONTENT_TYPE" => "application/x-www-form-urlencoded", "CONTENT_LENGTH" => "3")
    expect(env.keys).not_to include("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH")
  end

  it "echoes a 1 MiB POST body byte for byte" do
    body = Random.new(42).bytes(1024 * 1024)
    res = http { |h| h.post("/echo", body, "Content-Type" => "application/octet-stream") }
    expect(res.code).to eq("200")
    expect(res.body.bytesize).to eq(body.bytesize)
    expect(res.body.b == body).to be(true)
  end

  it "serves 100 requests on one keep-alive connection" do
    sockets = []
    http do |h|
      100.times do |i|
        res = h.get("/?i=#{i}")
        expect(res.body).to eq("Hello world!")
        sockets << h.instance_variable_get(:@socket).io.object_id
      end
    end
    expect(sockets.uniq.size).to eq(1)
  end

  it "answers 3 pipelined requests in order" do
    request = ->(path) { "GET #{path} HTTP/1.1\r\nHost: x\r\n\r\n" }
    data = raw_request(server, request["/a"] + request["/b"] + request["/c"], read_until: %r{not found: /c})
    expect(data.scan(%r{HTTP/1.1 404}).size).to eq(3)
    expect(data.index("not found: /a")).to be < data.index("not found: /b")
    expect(data.index("not found: /b")).to be < data.index("not found: /c")
  end

  it "turns an app exception into a 500, logs it, and keeps serving" do
    res = Net::HTTP.get_response(URI(server.url("/boom")))
    expect(res.code).to eq("500")
    expect(server.wait_for_output(/ArgumentError: boom from the app\n\t.*app\.ru:\d+/)).to be(true)
    expect(Net::HTTP.get_response(URI(server.url("/"))).body).to eq("Hello world!")
  end

  it "answers 50 concurrent connections" do
    results = Queue.new
    threads = Array.new(50) do |i|
      Thread.new do
        Net::HTTP.start(server.host, server.port, read_timeout: 20) do |h|
          results << h.get("/?c=#{i}").body
        end
      end
    end
    threads.each(&:join)
    bodies = Array.new(results.size) { results.pop }
    expect(bodies).to eq(["Hello world!"] * 50)
  end

  it "does not let a slow request delay another connection", timing: true do
    slow = Thread.new { Net::HTTP.get_response(URI(server.url("/sleep?s=1"))) }
    # Proceed only once the slow request is in the app (a real condition).
    expect(server.wait_for_output(/app: sleeping 1.0/)).to be(true)
    started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    fast = Net::HTTP.get_response(URI(server.url("/")))
    fast_done = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    expect(fast.body).to eq("Hello world!")
    expect(slow.value.body).to eq("slept 1.0")
    slow_done = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    # The fast request finished while the slow one was still running.
    expect(fast_done).to be < slow_done
    expect(fast_done - started).to be < 0.9
  end

  it "chunks an each-body on HTTP/1.1 and closes after it on HTTP/1.0" do
    data = raw_request(server, "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", read_until: /0\r\n\r\n\z/)
    expect(data).to include("Transfer-Encoding: chunked")
    expect(data).to end_with("6\r\npart0\n\r\n6\r\npart1\n\r\n6\r\npart2\n\r\n0\r\n\r\n")

    old = raw_request(server, "GET /stream HTTP/1.0\r\n\r\n")
    expect(old).to start_with("HTTP/1.0 200 OK\r\n")
    expect(old).to include("Connection: close")
    expect(old).to end_with("\r\n\r\npart0\npart1\npart2\n")
  end

  it "sends Rack 2 newline-joined and Rack 3 array header values as separate lines" do
    expect(Net::HTTP.get_response(URI(server.url("/cookies"))).get_fields("Set-Cookie")).to eq(%w[a=1 b=2])
    expect(Net::HTTP.get_response(URI(server.url("/rack3"))).get_fields("Set-Cookie")).to eq(%w[x=1 y=2])
  end

  it "answers a malformed request with 400 and closes" do
    data = raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    expect(data).to start_with("HTTP/1.1 400 Bad Request\r\n")
    expect(Net::HTTP.get_response(URI(server.url("/"))).code).to eq("200")
  end

  # The IO threads poll for up to idle_spin (50 us) after their last event
  # before they sleep; nothing may keep polling once the server is idle.
  it "uses no CPU once idle after a burst of requests", timing: true do
    http { |h| 200.times { expect(h.get("/").code).to eq("200") } }
    ticks = -> { File.read("/proc/#{server.pid}/stat").split(") ").last.split[11, 2].sum(&:to_i) }
    before = ticks.call
    sleep 1 # the measuring window
    used = ticks.call - before
    hz = Integer(`getconf CLK_TCK`)
    expect(used).to be <= hz / 20, "idle server used #{used} clock ticks (of #{hz}/s) in one second"
  end
end
