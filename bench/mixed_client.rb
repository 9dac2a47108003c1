# frozen_string_literal: true

# ruby mixed_client.rb PORT SECONDS CONNECTIONS
# Each connection (a thread, keep-alive) sends 9 requests to / then one to
# /slow, over and over; prints the p99 of the / latencies.
require "socket"

port, seconds, connections = ARGV.map { |a| Integer(a) }
stop_at = Process.clock_gettime(Process::CLOCK_MONOTONIC) + seconds
REQUEST = "GET %s HTTP/1.1\r\nHost: x\r\n\r\n"

def request(socket, path)
  socket.write(format(REQUEST, path))
  data = +""
  until (head_end = data.index("\r\n\r\n")) && data.bytesize >= head_end + 4 + data[/Content-Length: (\d+)/i, 1].to_i
    data << socket.readpartial(65_536)
  end
end

latencies = Queue.new
threads = Array.new(connections) do
  Thread.new do
    socket = TCPSocket.new("127.0.0.1", port)
    while Process.clock_gettime(Process::CLOCK_MONOTONIC) < stop_at
      9.times do
        started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        request(socket, "/")
        latencies << (Process.clock_gettime(Process::CLOCK_MONOTONIC) - started) * 1000
      end
      request(socket, "/slow")
    end
    socket.close
  end
end
threads.each(&:join)
all = Array.new(latencies.size) { latencies.pop }.sort
p99 = all[(all.size * 0.99).floor.clamp(0, all.size - 1)] || 0
puts format("requests=%d p50_ms=%.3f p99_ms=%.3f", all.size, all[all.size / 2] || 0, p99)
