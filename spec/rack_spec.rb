# frozen_string_literal: true

# The Rack SPEC as an app sees it: env, rack.input, streaming bodies, hijack,
# early hints, after-response callbacks. The fixture wraps most routes in
# Rack::Lint.
RSpec.describe "Rack behaviour" do
  before(:all) do
    @server = ServerProcess.start(
      [*ServerHelpers::RUBY, File.join(ServerHelpers::ROOT, "exe/butterflies"), "-b", "tcp://127.0.0.1:0",
       "-t", "4", ServerHelpers::APP]
    )
  end

  after(:all) { @server&.kill }

  let(:server) { @server }

  def env_for(request)
    response = raw_request(server, request)
    JSON.parse(response[/\{.*\}/m])
  end

  describe "env" do
    it "takes SERVER_NAME and SERVER_PORT from Host, with IPv6 literals and the default port" do
      env = env_for("GET /env HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n")
      expect(env).to include("SERVER_NAME" => "[::1]", "SERVER_PORT" => "8080", "HTTP_HOST" => "[::1]:8080")
      env = env_for("GET /env HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
      expect(env).to include("SERVER_NAME" => "example.com", "SERVER_PORT" => "80")
    end

    it "keeps SERVER_PROTOCOL, raw PATH_INFO and an always-present QUERY_STRING" do
      env = env_for("GET /env/a%20b HTTP/1.0\r\n\r\n")
      expect(env).to include("SERVER_PROTOCOL" => "HTTP/1.0", "PATH_INFO" => "/env/a%20b", "QUERY_STRING" => "",
                             "SCRIPT_NAME" => "")
    end

    it "passes extension methods through" do
      response = raw_request(server, "PURGE /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      expect(JSON.parse(response[/\{.*\}/m])["REQUEST_METHOD"]).to eq("PURGE")
    end
  end

  describe "rack.input" do
    it "gives a request without a body an input at its end, by the same rules" do
      res = Net::HTTP.start(server.host, server.port) { |h| h.get("/input_ops") }
      expect(JSON.parse(res.body)).to eq(
        "read3" => nil, "read_buf" => nil, "buf" => "", "gets" => nil, "rest" => "",
        "eof_read" => "", "eof_read_n" => nil, "each" => []
      )
    end

    it "keeps the next request's input working after an app closed its own" do
      Net::HTTP.start(server.host, server.port) do |h|
        3.times { expect(h.get("/close_input").body).to eq('read ""') }
        expect(h.post("/close_input", "abc").body).to eq('read "abc"')
        expect(h.get("/close_input").body).to eq('read ""')
      end
    end

    it "follows the SPEC's read, gets, each, rewind and EOF rules" do
      res = Net::HTTP.start(server.host, server.port) { |h| h.post("/input_ops", "abcdeline\nrest") }
      expect(JSON.parse(res.body)).to eq(
        "read3" => "abc", "read_buf" => "de", "buf" => "de", "gets" => "line\n", "rest" => "rest",
        "eof_read" => "", "eof_read_n" => nil, "each" => %W[abcdeline\n rest]
      )
    end

    it "passes Rack::Lint with a chunked POST" do
      data = raw_request(server, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n" \
                                 "3\r\nabc\r\n0\r\n\r\n")
      expect(data).to start_with("HTTP/1.1 200 OK")
      expect(body_of(data)).to eq("abc")
    end
  end

  describe "streamed bodies" do
    it "sends the first chunk before the body has finished" do
      socket = TCPSocket.new(server.host, server.port)
      socket.write("GET /stream_wait HTTP/1.1\r\nHost: x\r\n\r\n")
      first = read_response(socket, read_until: /first\n\r\n/)
      expect(first).to include("Transfer-Encoding: chunked")
      expect(first).not_to include("second")
      expect(Net::HTTP.get(URI(server.url("/release")))).to eq("released")
      expect(read_response(socket, read_until: /0\r\n\r\n\z/)).to include("second\n")
    ensure
      socket&.close
    end

    it "delivers pieces an app produced before pausing, while it pauses" do
      socket = TCPSocket.new(server.host, server.port)
      socket.write("GET /stream_hold HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(read_response(socket, read_until: /second\n\r\n/, timeout: 5)).not_to include("third")
      expect(Net::HTTP.get(URI(server.url("/release_hold")))).to eq("released")
      expect(read_response(socket, read_until: /0\r\n\r\n\z/)).to include("third\n")
    ensure
      socket&.close
    end

    it "serves a Rack 3 callable body through the stream" do
      data = raw_request(server, "GET /callable HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      expect(data).to end_with("\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n")
    end

    it "never terminates a chunked body that raised midway, and logs the error" do
      data = raw_request(server, "GET /each_error HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(data).to include("7\r\npartial\r\n")
      expect(data).not_to include("0\r\n\r\n")
      expect(server.wait_for_output(/RuntimeError: broken mid-body/)).to be(true)
    end

    it "calls close when the client disconnects mid-stream" do
      before = Net::HTTP.get(URI(server.url("/closed_count"))).to_i
      socket = TCPSocket.new(server.host, server.port)
      socket.write("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
      read_response(socket, read_until: /chunk 1\n/)
      socket.close
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 10
      count = before
      while count == before && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
        count = Net::HTTP.get(URI(server.url("/closed_count"))).to_i
      end
      expect(count).to eq(before + 1)
    end

    it "serves a to_path body's file" do
      res = Net::HTTP.get_response(URI(server.url("/file")))
      expect(res.code).to eq("200")
      expect(res.body).to eq(File.binread(ServerHelpers::APP))
      expect(res["Content-Length"]).to eq(File.size(ServerHelpers::APP).to_s)
    end
  end

  %w[nil status headers body].each do |kind|
    it "answers 500 to an invalid response (#{kind})" do
      expect(Net::HTTP.get_response(URI(server.url("/invalid?#{kind}"))).code).to eq("500")
      expect(server.wait_for_output(%r{handling GET /invalid: TypeError: invalid Rack response})).to be(true)
    end
  end

  describe "hijack" do
    it "hands the socket over with a full hijack" do
      data = raw_request(server, "GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(data).to eq("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
    end

    # The response to the first request is queued while the second is
    # already here (a pipelined batch goes out in one write): it must go out
    # before the app gets the socket.
    it "writes what a pipelined batch queued before a full or partial hijack" do
      data = raw_request(server, "GET /array HTTP/1.1\r\nHost: x\r\n\r\nGET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(data).to start_with("HTTP/1.1 200 OK\r\n").and include("Hello world!")
      expect(data).to end_with("\r\n\r\nhijacked")
      data = raw_request(server,
                         "GET /array HTTP/1.1\r\nHost: x\r\n\r\nGET /partial_hijack HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(data).to start_with("HTTP/1.1 200 OK\r\n").and include("Hello world!")
      expect(data).to end_with("\r\n\r\npartial")
    end

    # One rack.hijack object serves every request of its app thread.
    it "raises when rack.hijack is called after its request instead of acting on another" do
      expect(Net::HTTP.get_response(URI(server.url("/late_hijack"))).body).to eq("ok")
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
      log = "[]"
      while log == "[]" && Process.clock_gettime(Process::CLOCK_MONOTONIC) < deadline
        log = Net::HTTP.get(URI(server.url("/late_log")))
      end
      expect(log).to eq('["rack.hijack called after its request"]')
      expect(Net::HTTP.get_response(URI(server.url("/"))).code).to eq("200")
    end

    it "sends the head and gives the socket to the proc with a partial hijack" do
      data = raw_request(server, "GET /partial_hijack HTTP/1.1\r\nHost: x\r\n\r\n")
      expect(data).to start_with("HTTP/1.1 200 OK\r\n")
      expect(data).to end_with("\r\n\r\npartial")
      expect(data).not_to match(/Content-Length|Transfer-Encoding/)
    end
  end

  describe "rack.early_hints" do
    it "sends 103 before the response on HTTP/1.1 and nothing on HTTP/1.0" do
      data = raw_request(server, "GET /early_hints HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      expect(data).to start_with("HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\n\r\nHTTP/1.1 200 OK")
      old = raw_request(server, "GET /early_hints HTTP/1.0\r\n\r\n")
      expect(old).to start_with("HTTP/1.0 200 OK")
    end
  end

  # rack.response_finished in reverse order of registration (Rack 3.1's
  # SPEC), rack.after_reply in order (Puma's).
  it "runs rack.response_finished and rack.after_reply after the response" do
    expect(Net::HTTP.get_response(URI(server.url("/finished"))).code).to eq("201")
    deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 5
    log = ""
    until log.include?(":after_reply_second") || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
      log = Net::HTTP.get(URI(server.url("/finished_log")))
    end
    expect(log).to eq('[:registered_second, ["/finished", 201, nil], :after_reply, :after_reply_second]')
  end
end
