# frozen_string_literal: true

require "socket"
require "uri"

module Butterflies
  # The control server (`control_url`, off by default): `GET /stats` (JSON,
  # Puma's shape), `GET /metrics` (Prometheus text), `GET
  # /thread-backtraces` and `/gc-stats` (each process's, see Inquiry), and the actions
  # `/stop`, `/halt`, `/restart`, `/phased-restart`, `/reload` (GET or
  # POST, as Puma's control app takes them), each what its signal does. Served by the
  # cluster master's own loop (or single mode's main loop), never by a Rust
  # thread, one short request at a time; nothing in it reaches the app. A
  # TCP one needs the token (`?token=` as Puma's, or `Authorization:
  # Bearer`), compared in constant time; a missing or wrong one gets 401
  # with `WWW-Authenticate: Bearer` (RFC 6750).
  class Control
    INHERIT_ENV = "BUTTERFLIES_CONTROL_FD"
    # A client gets this long to send its request.
    READ_SECONDS = 2

    # Checks a control URL and token; returns [kind, host or path, port].
    def self.parse(url, token)
      uri = URI.parse(url.to_s)
      case uri.scheme
      when "tcp"
        raise ConfigError, "control_url #{url}: a TCP control server needs a control_token" if token.to_s.empty?
        raise ConfigError, "control_url #{url}: expected tcp://HOST:PORT" unless uri.host && uri.port

        [:tcp, uri.host.delete_prefix("[").delete_suffix("]"), uri.port]
      when "unix" then [:unix, "#{uri.host}#{uri.path}", nil]
      else raise ConfigError, "control_url must be tcp://HOST:PORT or unix:///path, got #{url.inspect}"
      end
    rescue URI::InvalidURIError
      raise ConfigError, "control_url must be tcp://HOST:PORT or unix:///path, got #{url.inspect}"
    end

    # Binds (or adopts, after a hot restart) the control socket.
    ACTIONS = %w[stop halt restart phased-restart reload reopen-logs].freeze
    # The signal that does each action (halt has none: the server exits at
    # once); `butterflies ctl -P` sends them itself.
    SIGNALS = { "stop" => "TERM", "restart" => "USR2", "phased-restart" => "USR1", "reload" => "HUP",
                "reopen-logs" => LogFiles::SIGNAL }.freeze

    # The control server `config` asks for (nil if none), serving `owner`:
    # a Server or a Cluster, whose
    # - `report` returns a StatsReport;
    # - `act(name)` is called with an action's name after its answer went
    #   out, and `act("name?")` before, returning an error message if the
    #   server cannot do it (single mode has no phased restart);
    # - `inquire(name, seconds)` returns the answer to an Inquiry, to send
    #   as JSON, waiting at most `seconds` for other processes'.
    def self.for(config, owner)
      return nil unless config[:control_url]

      Control.open(config[:control_url], config[:control_token], owner)
    end

    def self.open(url, token, owner)
      kind, where, port = parse(url, token)
      inherited = ENV.delete(INHERIT_ENV)
      io = if inherited
             (kind == :tcp ? TCPServer : UNIXServer).for_fd(Integer(inherited))
           elsif kind == :tcp
             TCPServer.new(where, port)
           else
             File.unlink(where) if File.socket?(where)
             UNIXServer.new(where)
           end
      new(io, token, owner)
    rescue SystemCallError => e
      raise BindError, "control_url #{url}: #{e.message}"
    end

    attr_reader :io

    def initialize(io, token, owner)
      @io = io
      @token = token.to_s
      @owner = owner
    end

    # Serves the requests waiting to be accepted; never blocks.
    def serve_ready
      loop do
        client = @io.accept_nonblock(exception: false)
        return if client == :wait_readable || client.nil?

        serve(client)
      end
    rescue StandardError => e
      # The control server must never take the master down with it.
      warn "butterflies: control server: #{e.class}: #{e.message}"
    end

    # The descriptor, kept across exec (a hot restart keeps listening).
    def fd_for_exec
      @io.close_on_exec = false
      @io.fileno
    end

    def close
      @io.close
    rescue IOError
      nil
    end

    private

    def serve(client)
      request = read_head(client)
      return unless request

      status, type, body, challenge, action = answer(request)
      respond(client, status, type, body, challenge)
      client.close
      @owner.act(action) if action
    rescue IOError, SystemCallError
      nil
    ensure
      client.close
    end

    def read_head(client)
      head = +""
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + READ_SECONDS
      until head.include?("\r\n\r\n")
        left = deadline - Process.clock_gettime(Process::CLOCK_MONOTONIC)
        return nil if left <= 0 || head.bytesize > 16_384 || !client.wait_readable(left)

        chunk = client.read_nonblock(4096, exception: false)
        return nil if chunk.nil?

        head << chunk if chunk.is_a?(String)
      end
      head
    end

    def answer(head)
      method, target = head.lines.first.to_s.split(" ", 3)
      path, query = target.to_s.split("?", 2)
      return [401, "text/plain", "a control token is needed\n", true] unless authorized?(head, query)
      return [405, "text/plain", "only GET or POST\n"] unless %w[GET POST].include?(method)

      case path
      when "/stats" then [200, "application/json", "#{JSON.generate(@owner.report.stats)}\n"]
      when "/metrics" then [200, "text/plain; version=0.0.4; charset=utf-8", @owner.report.metrics]
      when *Inquiry::NAMES.map { |name| "/#{name}" } then inquiry(path.delete_prefix("/"), query)
      else action(path.to_s.delete_prefix("/"))
      end
    end

    def inquiry(name, query)
      given = URI.decode_www_form(query.to_s).to_h["timeout"]
      seconds = given ? Float(given, exception: false) : Inquiry::ANSWER_SECONDS
      unless (0.001..Inquiry::MAX_SECONDS).cover?(seconds)
        return [400, "text/plain", "timeout must be a number of seconds in (0, #{Inquiry::MAX_SECONDS}]\n"]
      end

      [200, "application/json", "#{JSON.generate(@owner.inquire(name, seconds))}\n"]
    end

    def action(name)
      return [404, "text/plain", "no such control action: /#{name}\n"] unless ACTIONS.include?(name)

      refused = @owner.act("#{name}?")
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

    def respond(client, status, type, body, challenge = false)
      reason = { 200 => "OK", 400 => "Bad Request", 401 => "Unauthorized", 404 => "Not Found", 405 => "Method Not Allowed",
                 409 => "Conflict" }[status]
      head = +"HTTP/1.1 #{status} #{reason}\r\ncontent-type: #{type}\r\ncontent-length: #{body.bytesize}\r\n"
      head << "www-authenticate: Bearer realm=\"butterflies\"\r\n" if challenge
      head << "connection: close\r\n\r\n"
      client.write(head, body)
    end
  end
end
