# frozen_string_literal: true

# Clients that try to make the server hold memory or sockets it should not.
RSpec.describe "hostile clients", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  def rss_kib(pid)
    File.read("/proc/#{pid}/status")[/VmRSS:\s+(\d+)/, 1].to_i
  end

  # Writes `bytes` over and over until the server stops taking them (no
  # progress for `stall` seconds) or `limit` bytes went out; returns the
  # total written.
  def push_until_stalled(socket, bytes, limit:, stall:)
    written = 0
    while written < limit
      n = socket.write_nonblock(bytes, exception: false)
      if n == :wait_writable
        break unless socket.wait_writable(stall)

        next
      end
      written += n
    end
    written
  end

  it "stops reading a pipelining client that never reads its responses" do
    server = start_butterflies("-t", "2", "--io-threads", "1", rackup: faulty)
    expect(Net::HTTP.get(URI(server.url("/bytes?n=10")))).to eq("x" * 10)
    before = rss_kib(server.pid)
    socket = Socket.new(:INET, :STREAM)
    socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    socket.connect(Socket.sockaddr_in(server.port, server.host))
    requests = "GET /bytes?n=1 HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
    limit = 256 << 20
    # Nobody reads the responses, so only so many fit in the socket buffers
    # (a few MB: some 10^4 responses); the server must then stop reading
    # requests, having read about as many as it answered plus its input
    # cap. Without a bound it read 64 KiB more per response it sent, and
    # took in all 256 MB.
    written = push_until_stalled(socket, requests, limit: limit, stall: 3)
    expect(written).to be < 32 << 20
    grown = rss_kib(server.pid) - before
    expect(grown).to be < 32 * 1024, "RSS grew by #{grown} KiB"
    # Other clients are served meanwhile.
    expect(Net::HTTP.get(URI(server.url("/bytes?n=5")))).to eq("xxxxx")
  ensure
    socket&.close
  end

  it "closes a connection at once when the client's FIN came with its request" do
    server = start_butterflies("-t", "2", "--io-threads", "1", "--idle-timeout", "60", rackup: faulty)
    20.times do |i|
      socket = TCPSocket.new(server.host, server.port)
      socket.write("GET /bytes?n=#{i + 1} HTTP/1.1\r\nHost: x\r\n\r\n")
      socket.close_write
      # read_response returns at EOF; without it, it raises after 5 s (the
      # connection would sit in CLOSE-WAIT until the 60 s idle timeout).
      response = read_response(socket, timeout: 5)
      expect(response).to start_with("HTTP/1.1 200").and end_with("x" * (i + 1))
    ensure
      socket&.close
    end
  end

  it "closes a connection at once when the client hangs up in the middle of a head" do
    server = start_butterflies("-t", "2", "--io-threads", "1", "--header-timeout", "60", rackup: faulty)
    20.times do
      socket = TCPSocket.new(server.host, server.port)
      socket.write("GET /bytes HTTP/1.1\r\nHo")
      socket.close_write
      expect(read_response(socket, timeout: 5)).to eq("")
    ensure
      socket&.close
    end
  end
end

RSpec.describe "running out of file descriptors", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  it "accepts again once descriptors free up, even after the backlog filled" do
    # A backlog larger than the descriptors left: the first round of SYNs
    # alone runs the server out (retransmitted SYNs come seconds apart).
    server = start_butterflies("-t", "1", "--io-threads", "1", "--backlog", "64",
                               rackup: faulty, spawn: { rlimit_nofile: 64 })
    expect(Net::HTTP.get(URI(server.url("/bytes?n=2")))).to eq("xx")
    # More connections than the server has descriptors: it accepts until
    # EMFILE, the backlog fills, the kernel drops the rest's SYNs.
    sockets = Array.new(150) do
      socket = Socket.new(:INET, :STREAM)
      socket.connect_nonblock(Socket.sockaddr_in(server.port, server.host), exception: false)
      socket
    end
    expect(server.wait_for_output(/accept failed: EMFILE.*; retrying every/)).to be(true), server.output
    sockets.each(&:close)
    # Served again: the server closes what it had, then must go back to
    # the backlog by itself (no new edge comes for a full one).
    response = nil
    wait_until(timeout: 20, message: "the server to accept again") do
      response = Net::HTTP.start(server.host, server.port, open_timeout: 2, read_timeout: 2) { |h| h.get("/bytes?n=3") }
    rescue Net::OpenTimeout, Net::ReadTimeout, SystemCallError, EOFError
      nil
    end
    expect(response.body).to eq("xxx")
    expect(server.output.scan("accept failed").size).to be <= 30, "logged more than about once a second"
  end
end

RSpec.describe "bytes behind a hijacked upgrade request", timeout: 60 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  it "are left in the socket for the app, which gets a real IO" do
    server = start_butterflies("-t", "2", rackup: faulty)
    3.times do
      data = raw_request(server, "GET /upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\nhello")
      expect(data).to start_with("HTTP/1.1 101 Switching Protocols\r\n").and end_with("TCPSocket got \"hello\"")
    end
  end

  it "do not stall a kept-alive connection whose upgrade request the app answered normally" do
    server = start_butterflies("-t", "2", rackup: faulty)
    data = raw_request(server, "GET /bytes?n=1 HTTP/1.1\r\nHost: x\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n" \
                               "GET /bytes?n=2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(data.scan("HTTP/1.1 200 OK").size).to eq(2)
    expect(data).to end_with("\r\n\r\nxx")
  end
end

RSpec.describe "slow readers of large responses", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  it "hold no app thread: the unsent rest waits with the IO thread" do
    server = start_butterflies("-t", "2", "--write-timeout", "60", rackup: faulty)
    readers = Array.new(4) do
      socket = Socket.new(:INET, :STREAM)
      socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
      socket.connect(Socket.sockaddr_in(server.port, server.host))
      socket.write("GET /big_array?mb=8 HTTP/1.1\r\nHost: x\r\n\r\n")
      socket
    end
    # Each reader got the start of its response: its app thread has sent.
    readers.each { |s| expect(read_response(s, read_until: /\r\n\r\ny/)).to start_with("HTTP/1.1 200 OK") }
    # Both app threads would otherwise wait for these readers (up to the
    # 60 s write timeout); another client is served at once.
    response = Net::HTTP.start(server.host, server.port, read_timeout: 10) { |h| h.get("/bytes?n=4") }
    expect(response.body).to eq("xxxx")
  ensure
    readers&.each(&:close)
  end
end
