# frozen_string_literal: true

# No Ruby string's memory reaches the wire unless the app put it there: a
# body whose strings another thread rewrites and frees while a slow client
# reads must come out as the app's bytes, chunk by chunk.
RSpec.describe "memory safety of response bodies", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")
  chunks = 600
  chunk_bytes = 20_000

  # A client with a 4 KiB receive buffer: the server's writes block and it
  # releases the GVL mid-body, which is when the rewriting thread runs.
  def slow_get(server, path)
    socket = Socket.new(:INET, :STREAM)
    socket.setsockopt(Socket::SOL_SOCKET, Socket::SO_RCVBUF, 4096)
    socket.connect(Socket.sockaddr_in(server.port, server.host))
    socket.write("GET #{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = read_response(socket, timeout: 60)
    data.b.split("\r\n\r\n", 2)
  ensure
    socket&.close
  end

  it "sends only bytes the app wrote when its Array body's strings are rewritten during the send" do
    server = start_butterflies("-t", "2", rackup: faulty)
    3.times do
      head, body = slow_get(server, "/rewritten")
      expect(head).to start_with("HTTP/1.1 200")
      expect(body.bytesize).to eq(chunks * chunk_bytes)
      foreign = (0...chunks).reject do |i|
        piece = body.byteslice(i * chunk_bytes, chunk_bytes)
        letter = (97 + (i % 26)).chr
        piece == letter * chunk_bytes || piece == "Z" * chunk_bytes
      end
      expect(foreign).to be_empty, "#{foreign.size} chunks carried bytes the app never wrote, " \
                                   "e.g. chunk #{foreign.first}: #{body.byteslice(foreign.first.to_i * chunk_bytes, 40).inspect}"
    end
  end
end
