# frozen_string_literal: true

require "json"
require "net/http"
require "socket"

# Behind real proxies from Debian: HAProxy sending the PROXY protocol (v2
# and v1), and nginx as a keep-alive HTTP reverse proxy. The client talks
# from 127.0.0.2 (all of 127/8 is loopback), the proxies from 127.0.0.1,
# so the address the app sees tells which one it got.
RSpec.describe "behind a proxy", timeout: 240 do
  include ClusterHelpers

  let(:client_ip) { "127.0.0.2" }

  around do |example|
    Dir.mktmpdir do |dir|
      @dir = dir
      example.run
    ensure
      # TERM: nginx's and HAProxy's masters take their workers with them
      # (a KILLed master would leave them behind).
      (@proxies || []).each { |proxy| proxy.stop("TERM") }
    end
  end

  # What the app saw, and a streamed body that waits for a gate file
  # between its two pieces (a real condition: the spec creates the file
  # only once the first piece arrived).
  let(:rackup) do
    File.join(@dir, "config.ru").tap do |path|
      File.write(path, <<~RUBY)
        require "json"
        gate = #{File.join(@dir, 'gate').inspect}
        run lambda { |env|
          if env["PATH_INFO"] == "/stream"
            body = Enumerator.new do |y|
              y << "first\\n"
              deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + 20
              sleep 0.01 until File.exist?(gate) || Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline
              y << "second\\n"
            end
            next [200, { "content-type" => "text/plain" }, body]
          end
          seen = { "remote_addr" => env["REMOTE_ADDR"], "proxy" => env["butterflies.proxy"],
                   "xff" => env["HTTP_X_FORWARDED_FOR"], "xfp" => env["HTTP_X_FORWARDED_PROTO"] }
          [200, { "content-type" => "application/json" }, [JSON.generate(seen)]]
        }
      RUBY
    end
  end

  # A proxy process, stopped after the example; ready once it accepts.
  def start_proxy(command, port)
    proxy = ServerProcess.new(command)
    (@proxies ||= []) << proxy
    wait_until(timeout: 15, message: "#{command.first} accepting on #{port}:\n#{proxy.output}") do
      raise "#{command.first} exited:\n#{proxy.output}" if proxy.exited?

      TCPSocket.new("127.0.0.1", port).close || true
    rescue Errno::ECONNREFUSED
      false
    end
    proxy
  end

  def proxy_config(name, **values)
    template = File.read(File.join(ServerHelpers::ROOT, "spec/fixtures/proxies", name))
    File.join(@dir, name).tap { |path| File.write(path, format(template, **values)) }
  end

  def haproxy(backend_port, send_proxy)
    port = free_port
    config = proxy_config("haproxy.cfg", port: port, backend_port: backend_port, send_proxy: send_proxy)
    start_proxy([program("haproxy"), "-db", "-f", config], port)
    port
  end

  def nginx(backend_port)
    port = free_port
    config = proxy_config("nginx.conf", port: port, backend_port: backend_port, dir: @dir,
                                        user: Process.uid.zero? ? "user root;" : "")
    start_proxy([program("nginx"), "-c", config, "-p", @dir], port)
    port
  end

  def get(port, path = "/", headers = {})
    Net::HTTP.start("127.0.0.1", port, local_host: client_ip, read_timeout: 10) { |h| h.get(path, headers) }
  end

  def seen(port)
    JSON.parse(get(port).body)
  end

  # The long runs' size: 10,000 requests, fewer under GC.stress (every
  # allocation a GC there: the run would take many minutes and find
  # nothing more).
  def long_run
    GcStressMode.on? ? 400 : 10_000
  end

  # `clients` threads, each on one kept-alive connection, `total` requests
  # in all; returns [answered 200, failures].
  def keep_alive_run(port, total: long_run, clients: 4)
    results = Array.new(clients) do
      Thread.new do
        ok = 0
        errors = []
        Net::HTTP.start("127.0.0.1", port, local_host: client_ip, read_timeout: 10) do |http|
          (total / clients).times do
            response = http.get("/")
            response.code == "200" ? ok += 1 : errors << response.code
          rescue StandardError => e
            errors << e.class.name
          end
        end
        [ok, errors]
      end
    end.map(&:value)
    [results.sum(&:first), results.flat_map(&:last)]
  end

  def start_proxied(protocol, *args)
    port = free_port
    server = ServerProcess.start(
      butterflies_command("-t", "4", "-b", "tcp://127.0.0.1:#{port}?proxy_protocol=#{protocol}",
                          "--proxy-from", "127.0.0.1", *args, rackup)
    )
    (@servers ||= []) << server
    server
  end

  it "takes the client's address from HAProxy's PROXY v2 header, 10,000 keep-alive requests without an error" do
    server = start_proxied("v2")
    front = haproxy(server.port, "send-proxy-v2")
    through = seen(front)
    expect(through["remote_addr"]).to eq(client_ip)
    expect(through["proxy"]).to include("version" => 2, "destination" => "127.0.0.1:#{front}")
    expect(through["proxy"]["source"]).to start_with("#{client_ip}:")

    ok, errors = keep_alive_run(front)
    expect([ok, errors.tally]).to eq([long_run, {}])
  end

  it "takes it from HAProxy's PROXY v1 header too, for the access log as well", stress: false do
    server = start_proxied("v1", "--log-requests")
    front = haproxy(server.port, "send-proxy")
    expect(seen(front)).to include("remote_addr" => client_ip, "proxy" => include("version" => 1))
    expect(server.wait_for_output(/^#{Regexp.escape(client_ip)} - - \[/)).to be(true), server.output
    ok, errors = keep_alive_run(front, total: long_run / 5)
    expect([ok, errors.tally]).to eq([long_run / 5, {}])
  end

  it "requires the header from trusted peers and refuses it from others" do
    server = start_proxied("any")
    # From 127.0.0.1 (trusted) without a header: closed, no response.
    socket = TCPSocket.new("127.0.0.1", server.port)
    socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(socket.read).to eq("")
    socket.close
    # From 127.0.0.2 (not trusted), a header is not believed: a 400.
    socket = Socket.tcp("127.0.0.1", server.port, client_ip, 0)
    socket.write("PROXY TCP4 203.0.113.1 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(socket.read).to start_with("HTTP/1.1 400")
    socket.close
    # From 127.0.0.2 without a header: served, as itself.
    expect(seen(server.port)).to include("remote_addr" => client_ip, "proxy" => nil)
    # A header read once: the next request on the connection is HTTP.
    socket = TCPSocket.new("127.0.0.1", server.port)
    socket.write("PROXY TCP4 203.0.113.1 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(read_one_response(socket)).to include('"remote_addr":"203.0.113.1"')
    socket.write("PROXY TCP4 198.51.100.1 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expect(read_one_response(socket)).to start_with("HTTP/1.1 400")
    socket.close
    expect(server.wait_for_output(/no PROXY protocol header/)).to be(true), server.output
  end

  it "passes nginx's forwarded fields untouched, streams through it unbuffered, and measures its queue time",
     stress: false do
    control = free_port
    port = free_port
    server = ServerProcess.start(
      butterflies_command("-t", "4", "-b", "tcp://127.0.0.1:#{port}", "--trust-request-start",
                          "--control-url", "tcp://127.0.0.1:#{control}", "--control-token", "t0ken", rackup)
    )
    (@servers ||= []) << server
    front = nginx(port)
    through = JSON.parse(get(front, "/", "X-Forwarded-For" => "198.51.100.7").body)
    expect(through).to include("remote_addr" => "127.0.0.1", "xff" => "198.51.100.7, #{client_ip}", "xfp" => "http")

    Net::HTTP.start("127.0.0.1", front, local_host: client_ip, read_timeout: 10) do |http|
      http.request(Net::HTTP::Get.new("/stream")) do |response|
        pieces = []
        response.read_body do |piece|
          pieces << piece
          File.write(File.join(@dir, "gate"), "") if pieces.join == "first\n"
        end
        expect(pieces.join).to eq("first\nsecond\n")
      end
    end
    expect(File.exist?(File.join(@dir, "gate"))).to be(true), "the second piece came before the gate opened"

    ok, errors = keep_alive_run(front)
    expect([ok, errors.tally]).to eq([long_run, {}])
    metrics = wait_until(message: "the proxy queue histogram") do
      text = Net::HTTP.get(URI("http://127.0.0.1:#{control}/metrics?token=t0ken"))
      text if text[/^butterflies_proxy_queue_seconds_count\{worker="single"\} (\d+)$/, 1].to_i >= long_run
    end
    expect(metrics).to match(/^butterflies_proxy_queue_seconds_count\{worker="single"\} \d+$/)
  end

  it "refuses proxy_protocol without proxy_from, naming the bind" do
    out = IO.popen([*butterflies_command("-b", "tcp://127.0.0.1:0?proxy_protocol=v2", rackup), { err: %i[child out] }],
                   &:read)
    expect(Process.last_status.success?).to be(false)
    expect(out.lines.last).to match(/proxy_protocol needs proxy_from/)
  end

  # One response: the head, then Content-Length bytes.
  def read_one_response(socket)
    head = +""
    head << socket.readpartial(1) until head.end_with?("\r\n\r\n")
    length = head[/^content-length: (\d+)/i, 1].to_i
    head + socket.read(length)
  end
end
