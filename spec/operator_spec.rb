# frozen_string_literal: true

# What an operator sees and does: output that reaches a pipe as it is
# written, and signals that do what the README's table says.
RSpec.describe "the operator's view", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  # Clients that loop until told to stop; counts successes and failures.
  def hammer(server, threads: 4)
    state = { ok: 0, failed: [], stop: false, lock: Mutex.new }
    workers = Array.new(threads) do
      Thread.new do
        until state[:stop]
          begin
            Net::HTTP.start(server.host, server.port, read_timeout: 20, open_timeout: 20) { |h| h.get("/pid") }
            state[:lock].synchronize { state[:ok] += 1 }
          rescue StandardError => e
            state[:lock].synchronize { state[:failed] << e }
          end
        end
      end
    end
    [state, workers]
  end

  it "gets an app's $stdout output through a pipe while the server runs" do
    server = start_butterflies("-t", "2", rackup: faulty)
    expect(Net::HTTP.get(URI(server.url("/puts?hello")))).to eq("said")
    expect(server.wait_for_output(/^app says hello$/)).to be(true), server.output
  end

  %w[USR1 HUP TTIN TTOU].each do |signal|
    it "logs and ignores #{signal} in single mode, and keeps serving", stress: false do
      server = start_butterflies("-t", "2", rackup: faulty)
      server.signal(signal)
      expect(server.wait_for_output(/#{signal} ignored: /)).to be(true), server.output
      begin
        expect(Net::HTTP.get(URI(server.url("/bytes?n=3")))).to eq("xxx")
      rescue SystemCallError => e
        raise "#{e.message}; exited: #{server.exited?.inspect} #{server.wait(timeout: 1).inspect}\n#{server.output}"
      end
      expect(server.stop&.exitstatus).to eq(0)
    end
  end

  it "hot restarts a single-mode server on USR2 with no refused connection, before_exec output kept", stress: false do
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "butterflies.rb"), "before_exec { puts 'before_exec ran' }\n")
      server = start_butterflies("-t", "2", "-C", File.join(dir, "butterflies.rb"), rackup: faulty)
      old_pid = Net::HTTP.get(URI(server.url("/pid")))
      state, clients = hammer(server)
      wait_until(message: "requests before the restart") { state[:ok] > 20 }
      server.signal("USR2")
      expect(server.wait_for_matches(/Listening on/, 2, timeout: 30)).to be(true), server.output
      before = state[:ok]
      wait_until(timeout: 20, message: "requests after the restart") { state[:ok] > before + 20 }
      state[:stop] = true
      clients.each(&:join)
      expect(state[:failed]).to be_empty, "#{state[:failed].size} failed: #{state[:failed].first.inspect}"
      expect(server.output).to include("before_exec ran")
      expect(Net::HTTP.get(URI(server.url("/pid")))).to eq(old_pid) # same process, re-executed
    end
  end
end

RSpec.describe "app errors and disconnects in the log", timeout: 120 do
  faulty = File.join(ServerHelpers::ROOT, "spec/fixtures/faulty.ru")

  it "names the path the client sent, not the one middleware rewrote" do
    server = start_butterflies("-t", "2", rackup: faulty)
    expect(Net::HTTP.get_response(URI(server.url("/rewrite_then_raise?secret=1"))).code).to eq("500")
    expect(server.wait_for_output(%r{app error handling GET /rewrite_then_raise: ArgumentError})).to be(true)
    expect(server.output).not_to include("secret=1", "/somewhere/else")
  end

  it "names real Ruby methods in the backtrace of an each body that raised" do
    server = start_butterflies("-t", "2")
    raw_request(server, "GET /each_error HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    expect(server.wait_for_output(%r{broken mid-body.*butterflies/stream.rb:\d+:in `write_each'}m)).to be(true), server.output
    expect(server.output).not_to include("eval:")
  end

  it "does not log a client that hangs up on a streamed response as an app error" do
    server = start_butterflies("-t", "2")
    before = Net::HTTP.get(URI(server.url("/closed_count"))).to_i
    socket = TCPSocket.new(server.host, server.port)
    socket.write("GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(read_response(socket, read_until: /chunk 100\n/)).to include("chunk 1\n")
    socket.close
    wait_until(message: "the body to be closed") { Net::HTTP.get(URI(server.url("/closed_count"))).to_i > before }
    expect(server.output).not_to match(/app error|closed stream|IOError/)
  end

  it "sends the lowlevel_error_handler's response to an app exception, and still logs it" do
    Dir.mktmpdir do |dir|
      File.write(File.join(dir, "butterflies.rb"), <<~RUBY)
        lowlevel_error_handler do |exception, env, status|
          [503, { "content-type" => "text/plain" }, ["sorry: \#{exception.message} at \#{env['PATH_INFO']} (\#{status})"]]
        end
      RUBY
      server = start_butterflies("-t", "2", "-C", File.join(dir, "butterflies.rb"))
      response = Net::HTTP.get_response(URI(server.url("/boom")))
      expect([response.code, response.body]).to eq(["503", "sorry: boom from the app at /boom (500)"])
      expect(server.wait_for_output(%r{app error handling GET /boom: ArgumentError: boom from the app})).to be(true)
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
    end
  end

  it "sends the registry's reason phrases" do
    server = start_butterflies("-t", "2", rackup: faulty)
    { 416 => "Range Not Satisfiable", 413 => "Content Too Large", 422 => "Unprocessable Content",
      451 => "Unavailable For Legal Reasons" }.each do |status, phrase|
      expect(raw_request(server, "GET /status?#{status} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        .to start_with("HTTP/1.1 #{status} #{phrase}\r\n")
    end
  end
end
