# frozen_string_literal: true

require "json"
require "net/http"
require "optparse"
require "socket"
require "uri"

module Butterflies
  # `butterflies ctl VERB`: pumactl's verbs against a running server, by its
  # control server (`-C URL -T TOKEN`), its state file (`-S PATH`), or, for
  # the verbs a signal does, its pidfile (`-P PATH`).
  #
  # Exit status: 0 done; 1 not running or unreachable; 2 a usage error;
  # 3 refused (a wrong token, an action the server cannot do).
  class Ctl
    VERBS = %w[status stats metrics stop halt restart phased-restart reload reopen-logs thread-backtraces
               gc-stats reload-certs].freeze
    NOT_RUNNING = 1
    USAGE = 2
    REFUSED = 3

    def initialize(argv, stdout: $stdout, stderr: $stderr)
      @argv = argv.dup
      @stdout = stdout
      @stderr = stderr
      @options = {}
    end

    def run
      parser.parse!(@argv)
      verb = @argv.shift
      return usage("which verb? one of #{VERBS.join(', ')}") unless VERBS.include?(verb)
      return usage("unexpected arguments: #{@argv.join(' ')}") unless @argv.empty?

      read_state if @options[:state]
      @options[:url] ? over_http(verb) : by_signal(verb)
    rescue OptionParser::ParseError => e
      usage(e.message)
    end

    private

    def parser
      OptionParser.new do |o|
        o.banner = "Usage: butterflies ctl [options] #{VERBS.join('|')}"
        o.on("-C", "--control-url URL", "The control server") { |v| @options[:url] = v }
        o.on("-T", "--control-token TOKEN", "Its token (or BUTTERFLIES_CONTROL_TOKEN)") { |v| @options[:token] = v }
        o.on("--control-token-file PATH", "Read its token from PATH") { |v| @options[:token] = read_token(v) }
        o.on("-S", "--state PATH", "The server's state file (pid, control URL and token)") { |v| @options[:state] = v }
        o.on("-P", "--pidfile PATH", "The server's pidfile (signal verbs and status)") { |v| @options[:pidfile] = v }
        o.on("--timeout SECONDS", Float, "How long workers get to answer thread-backtraces and gc-stats " \
                                         "(default #{Inquiry::ANSWER_SECONDS})") { |v| @options[:timeout] = v }
      end
    end

    def read_token(path)
      File.read(path).strip
    rescue SystemCallError => e
      raise OptionParser::InvalidArgument, "cannot read the token file #{path}: #{e.message}"
    end

    def read_state
      state = JSON.parse(File.read(@options[:state]))
      @options[:pid] ||= state["pid"]
      @options[:url] ||= state["control_url"]
      @options[:token] ||= state["control_token"]
    rescue SystemCallError, JSON::ParserError => e
      raise OptionParser::InvalidArgument, "cannot read the state file #{@options[:state]}: #{e.message}"
    end

    def over_http(verb)
      path = { "status" => "/stats" }.fetch(verb, "/#{verb}")
      path += "?timeout=#{@options[:timeout]}" if @options[:timeout] && Inquiry::NAMES.include?(verb)
      code, body = get(path)
      return fail_with("wrong or missing control token for #{@options[:url]}", REFUSED) if code == 401
      return fail_with(body.strip, REFUSED) unless code == 200

      @stdout.puts(verb == "status" ? summary(JSON.parse(body)) : body)
      0
    rescue SystemCallError, IOError, SocketError => e
      fail_with("cannot reach the control server at #{@options[:url]}: #{e.message}", NOT_RUNNING)
    end

    def summary(stats)
      return "running: single mode, #{stats['requests_count']} requests" unless stats["workers"]

      "running: #{stats['workers']} workers, #{stats['booted_workers']} booted, phase #{stats['phase']}"
    end

    # One request; the answer's status and body.
    def get(path)
      uri = URI.parse(@options[:url])
      sep = path.include?("?") ? "&" : "?"
      token = @options[:token] || ENV.fetch(Configuration::TOKEN_ENV, nil)
      target = token ? "#{path}#{sep}token=#{URI.encode_www_form_component(token)}" : path
      socket = uri.scheme == "unix" ? UNIXSocket.new("#{uri.host}#{uri.path}") : TCPSocket.new(uri.host, uri.port)
      socket.write("GET #{target} HTTP/1.1\r\nHost: control\r\nConnection: close\r\n\r\n")
      head, body = socket.read.split("\r\n\r\n", 2)
      [head.to_s[%r{\AHTTP/1\.1 (\d{3})}, 1].to_i, body.to_s]
    ensure
      socket&.close
    end

    def by_signal(verb)
      signal = verb == "status" ? 0 : Control::SIGNALS[verb]
      return usage("#{verb} needs the control server (-C, or -S with a state file)") unless signal

      pid = @options[:pid] || read_pidfile
      return usage("give -C URL, -S STATE or -P PIDFILE") unless pid

      signal_server(signal, pid)
    end

    def signal_server(signal, pid)
      Process.kill(signal, pid)
      @stdout.puts(signal.is_a?(Integer) ? "running: pid #{pid}" : "sent #{signal} to #{pid}")
      0
    rescue Errno::ESRCH
      fail_with("not running (pid #{pid})", NOT_RUNNING)
    end

    def read_pidfile
      return nil unless @options[:pidfile]

      Integer(File.read(@options[:pidfile]).strip)
    rescue SystemCallError, ArgumentError => e
      raise OptionParser::InvalidArgument, "cannot read the pidfile #{@options[:pidfile]}: #{e.message}"
    end

    def usage(message)
      fail_with("#{message} (see butterflies ctl --help)", USAGE)
    end

    def fail_with(message, status)
      @stderr.puts("butterflies ctl: #{message}")
      status
    end
  end
end
