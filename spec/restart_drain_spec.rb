# frozen_string_literal: true

# Graceful restarts lose no request on a keep-alive connection. Clients
# here are raw sockets that never retry (Net::HTTP would resend an
# idempotent request after a reset and hide it): a request is lost when
# its connection is reset or closed before any answer came.
RSpec.describe "restarts under keep-alive load", timeout: 300 do
  # One connection's life: requests until the server closes it or `done`
  # says stop. Counts answers into the thread's :answered and returns
  # :ok, or the reason the last request was lost.
  def one_connection(server, done)
    socket = TCPSocket.new(server.host, server.port)
    loop do
      return :ok if done.call

      answer = exchange(socket) or return :lost
      return answer unless %i[ok closing].include?(answer)

      Thread.current[:answered] += 1
      return :ok if answer == :closing
    end
  rescue Errno::ECONNRESET, Errno::EPIPE, Errno::ECONNREFUSED, IOError => e
    e.class.name
  ensure
    socket&.close
  end

  # One request on `socket`: :ok, :closing (answered, and the server will
  # close), :wrong, or nil when the connection ended before an answer.
  def exchange(socket)
    socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = read_head(socket) or return nil
    body = socket.read(head[/^content-length:\s*(\d+)/i, 1].to_i) or return nil
    return :wrong unless head.start_with?("HTTP/1.1 200") && body == "Hello world!"

    head.match?(/^connection:\s*close/i) ? :closing : :ok
  end

  def read_head(socket)
    head = +""
    until head.end_with?("\r\n\r\n")
      byte = socket.read(1) or return nil
      head << byte
    end
    head
  end

  # Runs `count` client threads until the block returns, yielding a
  # lambda that gives the answers so far; returns [answered, [reasons a
  # request was lost]].
  def under_load(server, count: 8)
    stop = false
    threads = Array.new(count) do
      Thread.new do
        Thread.current[:answered] = 0
        lost = []
        until stop
          result = one_connection(server, -> { stop })
          lost << result unless result == :ok
        end
        [Thread.current[:answered], lost]
      end
    end
    yield -> { threads.sum { |t| t[:answered].to_i } }
    stop = true
    results = threads.map(&:value)
    [results.sum(&:first), results.flat_map(&:last)]
  end

  def phased_restart(server, ready_before)
    old = ready_workers(server).values
    server.signal("USR1")
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, ready_before + 2, timeout: 30)).to be(true)
    wait_until(timeout: 30, message: "old workers to stop") { old.none? { |pid| alive?(pid) } }
    ready_before + 2
  end

  def hot_restart(server, ready_before, listening_before)
    server.signal("USR2")
    expect(server.wait_for_matches(/Listening on/, listening_before + 1, timeout: 30)).to be(true)
    expect(server.wait_for_matches(ClusterHelpers::WORKER_READY, ready_before + 2, timeout: 30)).to be(true)
    ready_before + 2
  end

  it "answers every request across 5 phased and 5 hot restarts", timing: true do
    server = start_cluster("--shutdown-timeout", "10", rackup: File.expand_path("fixtures/sized.ru", __dir__))
    ready = 2
    answered, lost = under_load(server) do |answers|
      wait_until(message: "requests before the restarts") { answers.call > 100 }
      5.times { ready = phased_restart(server, ready) }
      5.times { |i| ready = hot_restart(server, ready, i + 1) }
    end
    expect(lost).to eq([]), "#{lost.size} of #{answered + lost.size} requests lost: #{lost.tally}\n#{server.output}"
    expect(answered).to be > 1000
    expect(server.exited?).to be(false)
  end
end
