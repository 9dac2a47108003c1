# frozen_string_literal: true

# Apps whose responses contradict themselves must not desync a kept-alive
# connection: what the client reads as the next response is always the
# next response.
RSpec.describe "faulty apps", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")
  next_request = "GET /bytes?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

  let(:server) { start_butterflies("-t", "2", rackup: faulty) }

  # Sends `path` and a pipelined second request, reads to EOF.
  def pipelined(path, version: "1.1")
    raw_request(server, "GET #{path} HTTP/#{version}\r\nHost: x\r\n\r\n" \
                        "GET /bytes?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
  end

  %w[/long /each/long].each do |path|
    it "never sends more than the declared content-length, and closes (#{path})" do
      data = pipelined(path)
      expect(data).to start_with("HTTP/1.1 200 OK\r\n").and end_with("\r\n\r\nabc")
      expect(data.scan("HTTP/1.1").size).to eq(1)
      expect(server.wait_for_output(/app error handling GET #{path}: the body is longer than its content-length \(3\)/))
        .to be(true)
    end
  end

  %w[/short /each/short].each do |path|
    it "closes the connection when the body falls short of its content-length (#{path})" do
      data = pipelined(path)
      expect(data).to match(/^content-length: 100\r$/i).and end_with("\r\n\r\nhello")
      expect(data.scan("HTTP/1.1").size).to eq(1)
      expect(server.wait_for_output(/the body is 95 bytes shorter than its content-length \(100\)/)).to be(true)
    end
  end

  %w[/length_and_chunked /each/length_and_chunked /app_chunked /each/app_chunked].each do |path|
    it "passes the app's own chunked framing on, without its content-length (#{path})" do
      data = pipelined(path)
      first, second = data.split(%r{(?=HTTP/1\.1 )})
      expect(first).to match(/^transfer-encoding: chunked\r$/i).and end_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
      expect(first).not_to match(/content-length/i)
      expect(second).to start_with("HTTP/1.1 200 OK\r\n").and end_with("\r\n\r\nxx")
    end
  end

  # /bytes's response is held back while the next request is buffered
  # (a pipelined batch goes out in one write); the failing body closes the
  # connection, and must not take the response before it along.
  it "sends the pipelined response before one whose body fails before its first piece" do
    data = raw_request(server, "GET /bytes?n=2 HTTP/1.1\r\nHost: x\r\n\r\n" \
                               "GET /raise_before_body HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(data).to start_with("HTTP/1.1 200 OK\r\n").and include("\r\n\r\nxx")
    expect(data).not_to include("0\r\n\r\n")
    expect(server.wait_for_output(/no piece at all/)).to be(true)
  end

  # The same when the request after it is never answered: its app thread
  # is interrupted, and the connection closes after what was answered.
  it "sends the pipelined response before one whose app thread is interrupted" do
    data = raw_request(server, "GET /bytes?n=2 HTTP/1.1\r\nHost: x\r\n\r\n" \
                               "GET /interrupt HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(data).to start_with("HTTP/1.1 200 OK\r\n").and end_with("\r\n\r\nxx")
    expect(server.wait_for_output(/app thread got Interrupt: not an app error/)).to be(true)
    expect(Net::HTTP.get_response(URI(server.url("/bytes?n=3"))).body).to eq("xxx")
  end

  it "decodes the app's chunked framing for an HTTP/1.0 client, which never gets a Transfer-Encoding" do
    data = raw_request(server, "GET /app_chunked HTTP/1.0\r\n\r\n")
    expect(data).to start_with("HTTP/1.0 200 OK\r\n").and end_with("\r\n\r\nhello")
    expect(data).not_to match(/transfer-encoding/i)
    expect(data).to include("Connection: close\r\n")
  end

  %w[/bad_chunked /each/bad_chunked].each do |path|
    it "stops at the end of the app's chunked body and closes (#{path})" do
      data = pipelined(path)
      expect(data).to end_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
      expect(data.scan("HTTP/1.1").size).to eq(1)
      expect(server.wait_for_output(/the app's chunked body is invalid: bytes after the last chunk/)).to be(true)
    end
  end

  it "sends a transfer coding not ending in chunked close-delimited" do
    data = pipelined("/gzip")
    expect(data).to match(/^transfer-encoding: gzip\r$/i).and include("Connection: close\r\n")
    expect(data).to end_with("not really gzip")
    expect(data.scan("HTTP/1.1").size).to eq(1)
  end

  %w[/plus_length /two_lengths /interim /early_hints_status].each do |path|
    it "answers 500 to an invalid status or content-length and keeps serving (#{path})" do
      data = pipelined(path)
      expect(data).to start_with("HTTP/1.1 500 Internal Server Error\r\n")
      expect(data).to end_with("\r\n\r\nxx")
      expect(server.wait_for_output(/TypeError: invalid Rack response/)).to be(true)
    end
  end

  it "accepts a Rack 2 string status" do
    expect(pipelined("/string_status")).to start_with("HTTP/1.1 201 Created\r\n").and end_with("\r\n\r\nxx")
  end

  it "closes the connection after a streaming body that read from it" do
    data = raw_request(server, "GET /stream_read HTTP/1.1\r\nHost: x\r\n\r\nping#{next_request}")
    expect(data).to include("got \"ping\"")
    expect(data.scan("HTTP/1.1").size).to eq(1)
  end
end

RSpec.describe "Rack 3.1 env and protocol switching", timeout: 60 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")
  let(:server) { start_butterflies("-t", "2", rackup: faulty) }

  it "sets HTTP_VERSION to the protocol, never from a client's Version field" do
    data = raw_request(server, "GET /version HTTP/1.1\r\nHost: x\r\nVersion: evil\r\nConnection: close\r\n\r\n")
    expect(body_of(data)).to eq("HTTP/1.1")
  end

  it "switches protocols on rack.protocol, with rack.protocol listing what the client offered" do
    data = raw_request(server, "GET /switch HTTP/1.1\r\nHost: x\r\nUpgrade: other, echo\r\nConnection: Upgrade\r\n\r\nhello")
    expect(data).to start_with("HTTP/1.1 101 Switching Protocols\r\n").and include("Upgrade: echo\r\n")
    expect(data).to end_with("\r\n\r\necho:hello")
    expect(raw_request(server, "GET /switch HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")).to start_with("HTTP/1.1 426 ")
  end
end
