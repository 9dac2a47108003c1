# frozen_string_literal: true

require "json"

# The access log (--log-requests): one line per request on stdout, written
# by Rust off the request path, including the requests the app never saw.
RSpec.describe "the access log", timeout: 120 do
  def access_lines(server, count, pattern)
    expect(server.wait_for_matches(pattern, count)).to be(true), server.output
    server.output.lines.grep(pattern)
  end

  it "is off by default", stress: false do
    server = start_butterflies("-t", "2")
    expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
    expect(raw_request(server, "GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).to start_with("HTTP/1.1 200")
    server.signal("TERM")
    expect(server.wait_for_output(/Goodbye/)).to be(true)
    expect(server.output).not_to match(%r{HTTP/1\.1" \d{3}})
  end

  it "logs Apache's common format plus the duration, the server's own answers too" do
    server = start_butterflies("-t", "2", "--log-requests", "--max-body-bytes", "100")
    expect(Net::HTTP.get_response(URI(server.url("/echo?a=1"))).code).to eq("200")
    expect(raw_request(server, "GET / HTTP/1.1\r\nContent-Length: x\r\nHost: x\r\n\r\n")).to start_with("HTTP/1.1 400")
    big = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    expect(raw_request(server, big)).to start_with("HTTP/1.1 413")
    line = %r{^127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "(.*)" (\d{3}) (\d+|-) (\d+\.\d{4})$}
    lines = access_lines(server, 3, line)
    requests = lines.map { |l| l.match(line).captures.first(3) }
    expect(requests.map { |r| r.first(2) }).to include(["GET /echo?a=1 HTTP/1.1", "200"])
    expect(requests).to include(["- - -", "400", "-"], ["- - -", "413", "-"])
    expect(server.output).to include("* access log: common")
  end

  it "logs one JSON object a line, with the queue time and the worker" do
    server = start_cluster("--log-format", "json", workers: 2)
    pids = ready_workers(server)
    4.times { expect(Net::HTTP.get(URI(server.url("/pid?x=%22")))).to match(/\A\d+\z/) }
    objects = access_lines(server, 4, /^\{"time"/).map { |l| JSON.parse(l) }
    objects.each do |o|
      expect(o.keys).to eq(%w[time remote method path query status bytes duration_ms queue_ms worker])
      expect(o).to include("remote" => "127.0.0.1", "method" => "GET", "path" => "/pid", "query" => "x=%22",
                           "status" => 200)
      expect(o["time"]).to match(/\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\z/)
      expect(o["bytes"]).to be_positive
      expect(o["duration_ms"]).to be >= o["queue_ms"]
      expect(pids.keys).to include(o["worker"])
    end
  end

  it "escapes bytes of the path that are not printable ASCII", stress: false do
    server = start_butterflies("-t", "2", "--log-format", "json")
    response = raw_request(server, "GET /caf\xC3\xA9\"x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".b)
    expect(response).to start_with("HTTP/1.1 404")
    object = JSON.parse(access_lines(server, 1, /^\{"time"/).first)
    expect(object["path"]).to eq("/caf\\xC3\\xA9\"x")
  end
end
