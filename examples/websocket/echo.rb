# frozen_string_literal: true

require "digest/sha1"

# A WebSocket echo server on top of rack.hijack (RFC 6455, just enough:
# text/binary echo, ping/pong, close). Each connection gets a thread.
module WebSocketEcho
  GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

  module_function

  def call(env)
    key = env["HTTP_SEC_WEBSOCKET_KEY"]
    unless env["HTTP_UPGRADE"].to_s.casecmp?("websocket") && key && env["rack.hijack?"]
      return [426, { "content-type" => "text/plain", "upgrade" => "websocket" }, ["WebSocket only\n"]]
    end

    io = env["rack.hijack"].call
    io.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
             "Sec-WebSocket-Accept: #{accept(key)}\r\n\r\n")
    Thread.new { echo(io) }
    [-1, {}, []]
  end

  def accept(key)
    [Digest::SHA1.digest(key + GUID)].pack("m0") # base64 (the base64 gem leaves the default gems in Ruby 3.4)
  end

  def echo(io)
    loop do
      opcode, payload = read_frame(io)
      case opcode
      when 0x1, 0x2 then write_frame(io, opcode, payload)
      when 0x9 then write_frame(io, 0xA, payload)
      when 0x8, nil
        write_frame(io, 0x8, payload.to_s)
        break
      end
    end
  rescue IOError, SystemCallError
    nil
  ensure
    io.close unless io.closed?
  end

  def read_frame(io)
    head = io.read(2) or return
    opcode = head.getbyte(0) & 0x0f
    length = head.getbyte(1) & 0x7f
    length = io.read(2).unpack1("n") if length == 126
    length = io.read(8).unpack1("Q>") if length == 127
    mask = head.getbyte(1) & 0x80 != 0 ? io.read(4).bytes : nil
    payload = length.zero? ? +"" : io.read(length)
    payload = payload.bytes.each_with_index.map { |b, i| b ^ mask[i % 4] }.pack("C*") if mask
    [opcode, payload]
  end

  def write_frame(io, opcode, payload)
    header = [0x80 | opcode].pack("C")
    header << if payload.bytesize < 126
                [payload.bytesize].pack("C")
              elsif payload.bytesize < 65_536
                [126, payload.bytesize].pack("Cn")
              else
                [127, payload.bytesize].pack("CQ>")
              end
    io.write(header + payload.b)
  end
end
