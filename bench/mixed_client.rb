# frozen_string_literal: true

# ruby mixed_client.rb PORT SECONDS CONNECTIONS
# Each connection (a thread, keep-alive) sends 9 requests to / then one to
# /slow, over and over; prints the p99 of the / latencies.
require "socket"

port, seconds, connections = ARGV.map { |a| Integer(a) }
stop_at = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
REQUEST = "GET %s HTTP/1.1\r\nHost: x\r\n\r\n"

# One request on the connection; a server that closed a keep-alive
# connection (Puma does after some requests) gets a new one, and the
# request is sent again.
def request(conn, path)
  conn[0] ||= TCPSocket.new("127.0.0.1", conn[1])
  socket = conn[0]
  socket.write(format(REQUEST, path))
  data = +""
  until (head_end = data.index("\r\n\r\n")) && data.bytesize >= head_end + 4 + data[/Content-Length: (\d+)/i, 1].to_i
    data << socket.readpartial(65_536)
  end
  socket.close if data.match?(/^Connection: close/i)
  conn[0] = nil if socket.closed?
rescue EOFError, SystemCallError
  socket&.close
  conn[0] = nil
  retry
end

latencies = Queue.new
threads = Array.new(connections) do
  Thread.new do
    conn = [nil, port]
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < stop_at
      9.times do
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        request(conn, "/")
        latencies << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000
      end
      request(conn, "/slow")
    end
    conn[0]&.close
  end
end
threads.each(&:join)
all = Array.new(latencies.size) { latencies.pop }.sort
p99 = all[(all.size * 0.99).floor.clamp(0, all.size - 1)] || 0
puts format("requests=%d p50_ms=%.3f p99_ms=%.3f", all.size, all[all.size / 2] || 0, p99)
