# frozen_string_literal: true

require "digest"

# HTTP/1.1 rules over raw TCP against a real server: a representative set of
# what src/http's unit tests cover rule by rule.
RSpec.describe "HTTP/1.1 handling" do
  before(:all) do
    @server = ServerProcess.start(
      [*ServerHelpers::RUBY, File.join(ServerHelpers::ROOT, "exe/butterflies"), "-b", "tcp://127.0.0.1:0",
       "-t", "3", "--header-timeout", "1", "--body-timeout", "1", "--write-timeout", "2", "--max-body-bytes", "10000000",
       ServerHelpers::APP]
    )
  end

  after(:all) { @server&.kill }

  let(:server) { @server }

  def status_of(response)
    response[%r{\AHTTP/1\.1 (\d{3})}, 1]
  end

  it "accepts an 8,000-byte target and answers 414 past the limit" do
    ok = raw_request(server, "GET /#{'a' * 8000} HTTP/1.1\r\nHost: x\r\n\r\n", read_until: /not found/)
    expect(status_of(ok)).to eq("404")
    long = raw_request(server, "GET /#{'a' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(status_of(long)).to eq("414")
  end

  it "passes an 8 KiB cookie and answers 431 for a head past the limits" do
    cookie = raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\nCookie: #{'c' * 8192}\r\n\r\n", read_until: /Hello/)
    expect(status_of(cookie)).to eq("200")
    huge = raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\nX-Big: #{'c' * 20_000}\r\n\r\n")
    expect(status_of(huge)).to eq("431")
    many = (1..150).map { |i| "X-#{i}: v\r\n" }.join
    expect(status_of(raw_request(server, "GET / HTTP/1.1\r\nHost: x\r\n#{many}\r\n"))).to eq("431")
  end

  {
    "Content-Length with Transfer-Encoding" =>
      "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "two differing Content-Lengths" => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    "a Content-Length list" => "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\n",
    "HTTP/1.1 without Host" => "GET / HTTP/1.1\r\n\r\n",
    "an obs-folded field" => "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
    "a bare CR in a value" => "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
    "a TLS ClientHello" => "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
    "chunked not last" => "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
    "a bad chunk size" => "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
  }.each do |what, request|
    it "answers 400 and closes for #{what}" do
      response = raw_request(server, request)
      expect(status_of(response)).to eq("400")
      expect(response).to include("Connection: close")
    end
  end

  it "answers a pipelined batch of mixed requests in order, ending mid-request" do
    batch = [
      "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst",
      "GET /stream HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /boom HTTP/1.1\r\nHost: x\r\n\r\n",
      "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nlast"
    ].join
    socket = TCPSocket.new(server.host, server.port)
    socket.write("#{batch}GET /tail HTTP/1.1\r\nHo")
    got = read_response(socket, read_until: /last/)
    # A Content-Length body runs straight into the next status line.
    statuses = got.scan(%r{HTTP/1\.1 (\d{3}) }).flatten
    expect(statuses).to eq(%w[200 200 200 500 200 200])
    expect(got.index("Hello world!")).to be < got.index("first")
    expect(got.index("first")).to be < got.index("part2")
    expect(got.index("part2")).to be < got.index("Internal Server Error")
    socket.write("st: x\r\n\r\n")
    expect(read_response(socket, read_until: %r{not found: /tail})).to include("not found: /tail")
  ensure
    socket&.close
  end

  it "answers 501 to an unknown transfer coding" do
    response = raw_request(server, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    expect(status_of(response)).to eq("501")
  end

  it "refuses a 1 TB body at once with 413" do
    response = raw_request(server, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1099511627776\r\n\r\n", timeout: 5)
    expect(status_of(response)).to eq("413")
  end

  it "decodes a chunked body and keeps a request pipelined behind it out of rack.input" do
    request = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" \
              "5;name=\"a;b\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n" \
              "GET /pipelined HTTP/1.1\r\nHost: x\r\n\r\n"
    response = raw_request(server, request, read_until: %r{not found: /pipelined})
    expect(response).to include("\r\n\r\nhello world").or include("\r\nb\r\nhello world\r\n")
    expect(response).not_to include("GET /pipelined")
  end

  it "answers Expect: 100-continue before the body is sent" do
    socket = TCPSocket.new(server.host, server.port)
    socket.write("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    expect(read_response(socket, read_until: /\r\n\r\n/)).to eq("HTTP/1.1 100 Continue\r\n\r\n")
    socket.write("hello")
    response = read_response(socket, read_until: /hello(\r\n0\r\n\r\n)?\z/)
    expect(response).to start_with("HTTP/1.1 200 OK")
    expect(body_of(response)).to start_with("hello")
  ensure
    socket&.close
  end

  it "answers HEAD and 304 through Lint with no body" do
    head = raw_request(server, "HEAD /conditional HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(head).to start_with("HTTP/1.1 200 OK\r\n").and end_with("\r\n\r\n")
    expect(head).not_to match(/^content-length: 0/i)
    cached = raw_request(server, "GET /conditional HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v1\"\r\nConnection: close\r\n\r\n")
    expect(cached).to start_with("HTTP/1.1 304 Not Modified\r\n").and end_with("\r\n\r\n")
    expect(cached).not_to match(/^(content-length|transfer-encoding):/i)
  end

  it "gives HEAD the GET's Content-Length and no body; 204 gets no body" do
    head = raw_request(server, "HEAD /array HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(head).to include("Content-Length: 12\r\n")
    expect(head).to end_with("\r\n\r\n")
    none = raw_request(server, "GET /nocontent HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(none).to start_with("HTTP/1.1 204 No Content\r\n")
    expect(none).not_to match(/Content-Length|Transfer-Encoding/)
  end

  # The app thread that answered a keep-alive request reads the next one
  # itself for a moment (idle_spin), then gives the connection back to its
  # IO thread, which must still see whatever comes later or in pieces.
  it "serves a keep-alive connection's next request at once, late, in pieces, and after a bad one" do
    socket = TCPSocket.new(server.host, server.port)
    ask = lambda do |path, pause: nil|
      request = "GET #{path} HTTP/1.1\r\nHost: x\r\n\r\n"
      if pause
        socket.write(request[0, 10])
        sleep pause # the rest comes after the kept connection went home
        socket.write(request[10..])
      else
        socket.write(request)
      end
      read_response(socket, read_until: /\r\n\r\nHello world!\z/)
    end
    expect(ask.call("/array")).to start_with("HTTP/1.1 200 OK")
    expect(ask.call("/array")).to start_with("HTTP/1.1 200 OK")
    sleep 0.1 # longer than the app thread keeps it
    expect(ask.call("/array")).to start_with("HTTP/1.1 200 OK")
    expect(ask.call("/array", pause: 0.1)).to start_with("HTTP/1.1 200 OK")
    socket.write("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    expect(read_response(socket)).to start_with("HTTP/1.1 400 Bad Request")
  ensure
    socket&.close
  end

  it "closes after Connection: close, ignoring what was pipelined behind it" do
    request = "GET /array HTTP/1.1\r\nHost: x\r\nConnection: X-Foo, CLOSE\r\n\r\nGET /array HTTP/1.1\r\nHost: x\r\n\r\n"
    response = raw_request(server, request)
    expect(response.scan("HTTP/1.1 200").size).to eq(1)
  end

  it "drops X_Forwarded_For instead of letting it pass for X-Forwarded-For" do
    response = raw_request(server, "GET /env HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1\r\n" \
                                   "X_Forwarded_For: 6.6.6.6\r\nX-Multi: a\r\nX-Multi: b\r\nConnection: close\r\n\r\n")
    env = JSON.parse(response.split("\r\n\r\n", 2).last[/\{.*\}/m])
    expect(env["HTTP_X_FORWARDED_FOR"]).to eq("1.1.1.1")
    expect(env["HTTP_X_MULTI"]).to eq("a, b")
  end

  it "joins repeated fields also behind more fields than the env builder gathers at once" do
    fillers = (1..60).map { |i| "X-Filler-#{i}: #{i}\r\n" }.join
    response = raw_request(server, "GET /env HTTP/1.1\r\nHost: x\r\nX-Multi: a\r\n#{fillers}X-Multi: b\r\n" \
                                   "X-Late: 1\r\nX-Late: 2\r\nConnection: close\r\n\r\n")
    env = JSON.parse(response[/\{.*\}/m])
    expect(env).to include("HTTP_X_MULTI" => "a, b", "HTTP_X_LATE" => "1, 2", "HTTP_X_FILLER_60" => "60")
    expect(env.keys.grep(/\AHTTP_X_FILLER_/).size).to eq(60)
  end

  it "takes SERVER_NAME, SERVER_PORT and HTTP_HOST from an absolute-form target, never its scheme" do
    response = raw_request(server, "GET http://example.com:8080/env HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    env = JSON.parse(response[/\{.*\}/m])
    expect(env).to include("SERVER_NAME" => "example.com", "SERVER_PORT" => "8080", "PATH_INFO" => "/env",
                           "HTTP_HOST" => "example.com:8080", "rack.url_scheme" => "http")
    # A plaintext client cannot make the request look like HTTPS, and a
    # missing port is the connection scheme's default.
    response = raw_request(server, "GET https://secure.example/env HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n")
    env = JSON.parse(response[/\{.*\}/m])
    expect(env).to include("SERVER_NAME" => "secure.example", "SERVER_PORT" => "80",
                           "HTTP_HOST" => "secure.example", "rack.url_scheme" => "http")
    expect(env).not_to include("HTTPS")
  end

  it "refuses two Host lines in HTTP/1.0, chunked applied twice, and a fragment in the target" do
    [
      "GET /env HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
      "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      "GET /env#top HTTP/1.1\r\nHost: x\r\n\r\n"
    ].each do |request|
      expect(raw_request(server, request)).to start_with("HTTP/1.1 400 Bad Request\r\n"), request.inspect
    end
  end

  it "bounds chunk extensions and trailers, and checks chunk-size lines" do
    post = "POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    extensions = "1;#{'e' * 2000}\r\nx\r\n" * 9
    expect(raw_request(server, "#{post}#{extensions}0\r\n\r\n")).to start_with("HTTP/1.1 400 Bad Request\r\n")
    trailers = (0..200).map { |i| "T#{i}: v\r\n" }.join
    expect(raw_request(server, "#{post}1\r\nx\r\n0\r\n#{trailers}\r\n")).to start_with("HTTP/1.1 431 ")
    expect(raw_request(server, "#{post}1 \r\nx\r\n0\r\n\r\n")).to start_with("HTTP/1.1 400 Bad Request\r\n")
    expect(raw_request(server, "#{post}1 ;a=b\r\nx\r\n0\r\nT: v\r\n\r\n")).to start_with("HTTP/1.1 200 OK\r\n")
  end

  it "spools a large body to a file that the app reads as rack.input" do
    body = Random.new(5).bytes(3 * 1024 * 1024)
    res = Net::HTTP.start(server.host, server.port) { |h| h.post("/input", body) }
    expect(res.body).to eq("File #{body.bytesize} #{Digest::SHA256.hexdigest(body)}")
    small = Net::HTTP.start(server.host, server.port) { |h| h.post("/input", "abc") }
    expect(small.body).to eq("StringIO 3 #{Digest::SHA256.hexdigest('abc')}")
  end

  it "answers 408 to a head that trickles past the header timeout and closes" do
    socket = TCPSocket.new(server.host, server.port)
    socket.write("GET / HTTP/1.1\r\nHo")
    response = read_response(socket, timeout: 5)
    expect(status_of(response)).to eq("408")
  ensure
    socket&.close
  end

  it "answers 408 to a body that stalls past the body timeout" do
    socket = TCPSocket.new(server.host, server.port)
    socket.write("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    expect(status_of(read_response(socket, timeout: 5))).to eq("408")
  ensure
    socket&.close
  end

  it "turns a header value with CR LF from the app into a 500 and logs it" do
    response = raw_request(server, "GET /badheader HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(status_of(response)).to eq("500")
    expect(response).not_to include("injected")
    expect(server.wait_for_output(/invalid value for response header "x-evil"/)).to be(true)
  end

  it "keeps serving when clients reset, disconnect mid-response, or never read" do
    reset = TCPSocket.new(server.host, server.port)
    reset.setsockopt(Socket::SOL_SOCKET, Socket::SO_LINGER, [1, 0].pack("ii"))
    reset.write("GET /big?mb=8 HTTP/1.1\r\nHost: x\r\n\r\n")
    reset.close # RST at once

    partial = TCPSocket.new(server.host, server.port)
    partial.write("GET /big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    received += partial.readpartial(1 << 20).bytesize while received < (1 << 20)
    partial.close

    stalled = TCPSocket.new(server.host, server.port)
    stalled.write("GET /big?mb=64 HTTP/1.1\r\nHost: x\r\n\r\n")

    10.times { expect(Net::HTTP.get(URI(server.url("/array")))).to eq("Hello world!") }
    # The write timeout (2 s here) drops the client that never reads: it is
    # reset, which the client sees in its TCP state without reading a byte.
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 15
    closed = false
    until closed || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      state = stalled.getsockopt(Socket::IPPROTO_TCP, Socket::TCP_INFO).data.unpack1("C")
      closed = state != 1 # TCP_ESTABLISHED
      IO.select(nil, nil, nil, 0.1) unless closed # poll the state every 100 ms
    end
    expect(closed).to be(true)
  ensure
    stalled&.close
  end
end
