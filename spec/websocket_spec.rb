# frozen_string_literal: true

require "digest/sha1"
require "securerandom"

# A real WebSocket client handshake and masked frames against the
# hijack-based echo example.
RSpec.describe "WebSocket echo over rack.hijack" do
  def masked_frame(opcode, payload)
    mask = SecureRandom.random_bytes(4).bytes
    masked = payload.bytes.each_with_index.map { |b, i| b ^ mask[i % 4] }.pack("C*")
    [0x80 | opcode, 0x80 | payload.bytesize].pack("CC") + mask.pack("C*") + masked
  end

  def read_frame(socket)
    head = socket.read(2)
    length = head.getbyte(1) & 0x7f
    [head.getbyte(0) & 0x0f, socket.read(length)]
  end

  it "upgrades, echoes frames, and keeps serving plain HTTP" do
    server = start_butterflies(rackup: File.join(ServerHelpers::ROOT, "examples/websocket/config.ru"))
    key = [SecureRandom.random_bytes(16)].pack("m0") # base64, without the base64 gem (not default in Ruby 3.4)
    socket = TCPSocket.new(server.host, server.port)
    socket.write("GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
                 "Sec-WebSocket-Key: #{key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = read_response(socket, read_until: /\r\n\r\n/)
    expect(head).to start_with("HTTP/1.1 101 Switching Protocols\r\n")
    expected = [Digest::SHA1.digest("#{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11")].pack("m0")
    expect(head).to include("Sec-WebSocket-Accept: #{expected}\r\n")

    Timeout.timeout(10) do
      socket.write(masked_frame(0x1, "hello butterflies"))
      expect(read_frame(socket)).to eq([0x1, "hello butterflies"])
      socket.write(masked_frame(0x9, "ping"))
      expect(read_frame(socket)).to eq([0xA, "ping"])
      socket.write(masked_frame(0x8, ""))
      expect(read_frame(socket).first).to eq(0x8)
    end
    expect(Net::HTTP.get_response(URI(server.url("/"))).code).to eq("426")
  ensure
    socket&.close
  end
end
