# frozen_string_literal: true

require "socket"
require "uri"

module Butterflies
  # The control server (`control_url`, off by default): `GET /stats` (JSON,
  # Puma's shape), `GET /metrics` (Prometheus text), `GET
  # /thread-backtraces` and `/gc-stats` (each process's, see Inquiry), and
  # the actions `/stop`, `/halt`, `/restart`, `/phased-restart`, `/reload`
  # (GET or POST, as Puma's control app takes them), each what its signal
  # does, and the probes `/ready` and `/live` (no token). Nothing in it
  # reaches the app.
  #
  # It runs on threads of its own, never on the loop that supervises: an
  # acceptor thread, and a thread per client with a deadline to send its
  # request (READ_SECONDS) and one to take the answer (WRITE_SECONDS). At
  # most MAX_CLIENTS are served at once: a new one then takes the place of
  # the one that has waited longest for its request to arrive (idle
  # connections cannot lock an operator out), or is closed. An action
  # reaches the master as its signal would (through its signal queue), so
  # the master's loop stays the only place that acts.
  #
  # A TCP one needs the token (`?token=` as Puma's, or `Authorization:
  # Bearer`), compared in constant time; a missing or wrong one gets 401
  # with `WWW-Authenticate: Bearer` (RFC 6750). A Unix one is made mode
  # 0600 (or `?mode=0660`), and a live server's socket is never taken over.
  class Control
    INHERIT_ENV = "BUTTERFLIES_CONTROL_FD"
    # A client gets this long to send its request.
    READ_SECONDS = 2
    # And this long to read the answer (a big /thread-backtraces).
    WRITE_SECONDS = 10
    # Clients served at once.
    MAX_CLIENTS = 16
    ACTIONS = %w[stop halt restart phased-restart reload reopen-logs].freeze
    # The signal that does each action (halt has none: the server exits at
    # once); `butterflies ctl -P` sends them itself.
    SIGNALS = { "stop" => "TERM", "restart" => "USR2", "phased-restart" => "USR1", "reload" => "HUP",
                "reopen-logs" => LogFiles::SIGNAL }.freeze

    # Checks a control URL and token; returns [kind, host or path, port or
    # the Unix socket's mode].
    def self.parse(url, token)
      uri = URI.parse(url.to_s)
      case uri.scheme
      when "tcp" then [:tcp, *tcp_address(uri, url, token)]
      when "unix" then [:unix, "#{uri.host}#{uri.path}", unix_mode(uri.query, url)]
      else raise ConfigError, "control_url must be tcp://HOST:PORT or unix:///path, got #{url.inspect}"
      end
    rescue URI::InvalidURIError
      raise ConfigError, "control_url must be tcp://HOST:PORT or unix:///path, got #{url.inspect}"
    end

    def self.tcp_address(uri, url, token)
      raise ConfigError, "control_url #{url}: a TCP control server needs a control_token" if token.to_s.empty?
      raise ConfigError, "control_url #{url}: expected tcp://HOST:PORT" unless uri.host && uri.port

      [uri.host.delete_prefix("[").delete_suffix("]"), uri.port]
    end

    def self.unix_mode(query, url)
      given = URI.decode_www_form(query.to_s).to_h["mode"]
      return 0o600 unless given

      mode = Integer(given, 8, exception: false)
      return mode if mode&.between?(0, 0o777)

      raise ConfigError, "control_url #{url}: mode must be octal permissions such as 0660, got #{given.inspect}"
    end

    # The control server `config` asks for (nil if none), serving `owner`
    # and started: a Server or a Cluster, whose
    # - `report` returns a StatsReport;
    # - `act(name)` is called with an action's name after its answer went
    #   out, and `can?(name)` before, returning an error message if the
    #   server cannot do it (single mode has no phased restart);
    # - `inquire(name, seconds)` returns the answer to an Inquiry, to send
    #   as JSON, waiting at most `seconds` for other processes'.
    # Both are called from the control server's threads.
    def self.for(config, owner, log:)
      return nil unless config[:control_url]

      Control.open(config[:control_url], config[:control_token], owner, log: log)
    end

    # Binds (or adopts, after a hot restart) the control socket.
    def self.open(url, token, owner, log:)
      kind, where, port_or_mode = parse(url, token)
      inherited = ENV.delete(INHERIT_ENV)
      io = if inherited
             (kind == :tcp ? TCPServer : UNIXServer).for_fd(Integer(inherited))
           elsif kind == :tcp
             TCPServer.new(where, port_or_mode)
           else
             unix_server(where, port_or_mode)
           end
      new(io, token, owner, log: log)
    rescue SystemCallError => e
      raise BindError, "control_url #{url}: #{e.message}"
    end

    # A Unix socket at `path` with `mode`, made so that it never exists
    # with a wider one; a stale socket file is replaced, a live one is not.
    def self.unix_server(path, mode)
      if File.socket?(path)
        begin
          UNIXSocket.new(path).close
          raise BindError, "control_url unix://#{path}: another server is listening there"
        rescue Errno::ECONNREFUSED, Errno::ENOENT
          File.unlink(path) if File.socket?(path)
        end
      end
      old = File.umask(0o777 & ~mode)
      begin
        UNIXServer.new(path)
      ensure
        File.umask(old)
      end
    end

    attr_reader :io

    def initialize(io, token, owner, log:)
      @io = io
      @token = token.to_s
      @owner = owner
      @log = log
      @clients = {}
      @lock = Mutex.new
      @inquiring = Mutex.new
    end

    # Starts accepting on a thread of its own.
    def start
      @acceptor = Thread.new do
        Thread.current.name = "butterflies-control"
        accept_forever
      end
      self
    end

    # The descriptor, kept across exec (a hot restart keeps listening).
    def fd_for_exec
      @io.close_on_exec = false
      @io.fileno
    end

    # Closes the socket and every client's (in a forked child too, where
    # the threads serving them are gone).
    def close
      [@io, *@clients.keys].each do |io|
        io.close
      rescue IOError
        nil
      end
    end

    private

    def accept_forever
      loop do
        admit(@io.accept)
      rescue IOError
        break # closed
      rescue SystemCallError => e
        @log.warn "butterflies: control server: accept: #{e.message}"
        sleep 0.1 # out of descriptors: let clients finish
      end
    end

    # Each client is kept with the time it came and whether its request
    # has arrived (nil: still reading it).
    Client = Struct.new(:since, :read_at)

    def admit(client)
      @lock.synchronize do
        next unless room_for(client)

        @clients[client] = Client.new(Butterflies.monotonic, nil)
        Thread.new(client) { |c| serve(c) }
      end
    end

    # Makes room by closing the longest-waiting client still sending its
    # request; false (and `client` closed) if every client is being answered.
    def room_for(client)
      return true if @clients.size < MAX_CLIENTS

      oldest, = @clients.select { |_, c| c.read_at.nil? }.min_by { |_, c| c.since }
      if oldest
        oldest.close # its thread wakes with IOError and ends
        return true
      end
      client.close
      false
    end

    def serve(client)
      Thread.current.name = "butterflies-control-client"
      request = read_head(client)
      return unless request

      @lock.synchronize { @clients[client]&.read_at = Butterflies.monotonic }
      status, type, body, challenge, action = answer(request)
      respond(client, status, type, body, challenge)
      client.close
      @owner.act(action) if action
    rescue IOError, SystemCallError
      nil
    rescue StandardError => e
      # The control server must never take the master down with it.
      @log.warn "butterflies: control server: #{e.class}: #{e.message}"
    ensure
      @lock.synchronize { @clients.delete(client) }
      client.close unless client.closed?
    end

    def read_head(client)
      head = +""
      deadline = Butterflies.monotonic + READ_SECONDS
      until head.include?("\r\n\r\n")
        left = deadline - Butterflies.monotonic
        return nil if left <= 0 || head.bytesize > 16_384 || !client.wait_readable(left)

        chunk = client.read_nonblock(4096, exception: false)
        return nil if chunk.nil?

        head << chunk if chunk.is_a?(String)
      end
      head
    end

    # Probes need no token (Kubernetes' httpGet sends none): they tell
    # only whether the server takes traffic and whether its master runs.
    PROBES = %w[/ready /live].freeze

    def answer(head)
      method, target = head.lines.first.to_s.split(" ", 3)
      path, query = target.to_s.split("?", 2)
      PROBES.include?(path) ? probe(path) : answer_authorized(head, method, path, query)
    end

    def answer_authorized(head, method, path, query)
      return [401, "text/plain", "a control token is needed\n", true] unless authorized?(head, query)
      return [405, "text/plain", "only GET or POST\n"] unless %w[GET POST].include?(method)

      case path
      when "/stats" then [200, "application/json", "#{JSON.generate(@owner.report.stats)}\n"]
      when "/metrics" then [200, "text/plain; version=0.0.4; charset=utf-8", @owner.report.metrics]
      when *Inquiry::NAMES.map { |name| "/#{name}" } then inquiry(path.delete_prefix("/"), query)
      else action(path.to_s.delete_prefix("/"))
      end
    end

    # /ready: 200 while the server takes traffic, else 503 with what it
    # does (booting, reloading, draining, stopping). /live: 200 while the
    # supervising loop runs.
    def probe(path)
      if path == "/ready"
        state = @owner.state
        state == :ready ? [200, "text/plain", "ready\n"] : [503, "text/plain", "#{state}\n"]
      else
        @owner.live? ? [200, "text/plain", "live\n"] : [503, "text/plain", "the supervising loop is stuck\n"]
      end
    end

    def inquiry(name, query)
      given = URI.decode_www_form(query.to_s).to_h["timeout"]
      seconds = given ? Float(given, exception: false) : Inquiry::ANSWER_SECONDS
      unless (0.001..Inquiry::MAX_SECONDS).cover?(seconds)
        return [400, "text/plain", "timeout must be a number of seconds in (0, #{Inquiry::MAX_SECONDS}]\n"]
      end

      answer = @inquiring.synchronize { @owner.inquire(name, seconds) } # one question at a time
      [200, "application/json", "#{JSON.generate(answer)}\n"]
    end

    def action(name)
      return [404, "text/plain", "no such control action: /#{name}\n"] unless ACTIONS.include?(name)

      refused = @owner.can?(name)
      return [409, "text/plain", "#{refused}\n"] if refused

      [200, "application/json", "#{JSON.generate('status' => 'ok', 'action' => name)}\n", false, name]
    end

    def authorized?(head, query)
      return true if @token.empty?

      given = URI.decode_www_form(query.to_s).to_h["token"] ||
              head[/^authorization:\s*bearer\s+(\S+)\r?$/i, 1]
      secure_compare(given.to_s, @token)
    end

    # Compares in time that does not depend on where the strings differ.
    def secure_compare(given, expected)
      a = given.b
      b = expected.b
      diff = a.bytesize ^ b.bytesize
      b.bytesize.times { |i| diff |= (a.getbyte(i % [a.bytesize, 1].max) || 0) ^ b.getbyte(i) }
      diff.zero?
    end

    REASONS = { 200 => "OK", 400 => "Bad Request", 401 => "Unauthorized", 404 => "Not Found",
                405 => "Method Not Allowed", 409 => "Conflict", 503 => "Service Unavailable" }.freeze

    def respond(client, status, type, body, challenge = false)
      head = +"HTTP/1.1 #{status} #{REASONS[status]}\r\ncontent-type: #{type}\r\ncontent-length: #{body.bytesize}\r\n"
      head << "www-authenticate: Bearer realm=\"butterflies\"\r\n" if challenge
      head << "connection: close\r\n\r\n"
      write_within(client, head << body, Butterflies.monotonic + WRITE_SECONDS)
    end

    # Writes all of `data`, or gives up (closing) at the deadline.
    def write_within(client, data, deadline)
      data = data.b
      until data.empty?
        written = client.write_nonblock(data, exception: false)
        if written == :wait_writable
          left = deadline - Butterflies.monotonic
          return if left <= 0 || !client.wait_writable(left)
        else
          data = data.byteslice(written..)
        end
      end
    end
  end
end
