# frozen_string_literal: true

require "ipaddr"

module Butterflies
  # The config file language (config/butterflies.rb), Puma-style:
  #
  #   workers 2
  #   threads 5
  #   bind "tcp://0.0.0.0:3000"
  #   preload_app!
  #   on_worker_boot { |index| ... }
  #
  # Each directive checks its value at once; a wrong one raises ConfigError,
  # which names the file and the line. The command line sets its values
  # through these same directives (`label` then names the flag instead).
  class DSL
    def initialize(config, path, label: ->(name) { name })
      @config = config
      @path = path
      @label = label
    end

    # Listen on a URI: "tcp://HOST:PORT", "ssl://HOST:PORT?cert=PATH&key=PATH"
    # or "unix:///path". Repeatable.
    #   bind "tcp://0.0.0.0:3000"
    #   bind "tcp://0.0.0.0:3000", proxy_protocol: :v2   (or ?proxy_protocol=v2)
    def bind(uri, proxy_protocol: nil)
      uri = "#{uri}#{uri.to_s.include?('?') ? '&' : '?'}proxy_protocol=#{proxy_protocol}" if proxy_protocol
      Binds.parse(uri) # checks it
      @config[:binds] = @config[:binds] + [uri.to_s]
    end

    # Listen with TLS (rustls, TLS 1.2 and 1.3), as Puma's ssl_bind:
    #   ssl_bind "0.0.0.0", 9443, cert: "config/cert.pem", key: "config/key.pem"
    # Options: cert:/key: (paths) or cert_pem:/key_pem: (PEM text); ca: and
    # verify_mode: "none" | "peer" | "force_peer" for client certificates;
    # ssl_ciphersuites: "TLS_AES_256_GCM_SHA384:..."; and more certificates
    # served by SNI name: sni: { "api.example.com" => { cert:, key: } }.
    # Without cert and key (development), a self-signed localhost
    # certificate is made once and reused.
    def ssl_bind(host, port, sni: {}, **options)
      port = integer(:ssl_bind, port, min: 0, max: 65_535)
      host = host.to_s
      host = "[#{host}]" if host.include?(":") && !host.start_with?("[")
      pairs = options.map { |key, value| [key.to_s, value.to_s] }
      sni.each do |name, pair|
        pair = pair.transform_keys(&:to_s)
        pairs += [["cert", pair["cert"].to_s], ["key", pair["key"].to_s], ["host", name.to_s]]
      end
      query = URI.encode_www_form(pairs)
      bind("ssl://#{host}:#{port}#{"?#{query}" unless query.empty?}")
    end

    # The proxies whose PROXY protocol header is believed (binds with
    # proxy_protocol): addresses or CIDR ranges. Repeatable.
    #   proxy_from "10.0.0.0/8", "192.168.1.10"
    def proxy_from(*ranges)
      ranges = ranges.flatten.flat_map { |r| r.to_s.split(",") }.map(&:strip)
      ranges.each do |range|
        # The engine's form: an address, and a prefix length if any.
        raise IPAddr::InvalidAddressError unless range.match?(%r{\A\[?[\h.:]+\]?(/\d{1,3})?\z})

        IPAddr.new(range.delete_prefix("[").delete_suffix("]"))
      rescue IPAddr::Error
        raise ConfigError, "proxy_from #{range.inspect}: expected an address or CIDR range (10.0.0.0/8, ::1)"
      end
      @config[:proxy_from] = @config[:proxy_from] + ranges
    end

    # Shorthand for a TCP bind.  port 3000  /  port 3000, "127.0.0.1"
    # Without a host: 0.0.0.0, or under `rails server` and rackup the host
    # they were given (localhost in development), as Puma does.
    def port(number, host = nil)
      number = integer(:port, number, min: 0, max: 65_535)
      Binds.for_host(host || @config.default_host, number).each { |uri| bind(uri) }
    end

    # App threads per process: `threads 5` (always 5), or `threads 5, 32`
    # (5, and up to 32 while all are busy waiting on IO with the GVL free).
    def threads(min, max = nil)
      @config[:threads] = [integer(:threads, min, min: 0), 1].max
      @config[:max_threads] = [integer(:threads, max || min, min: 1), @config[:threads]].max
    end

    # Load the app in the master before forking (copy-on-write).
    def preload_app!(enabled = true)
      @config[:preload_app] = enabled ? true : false
    end

    # Pin worker i, with all its threads, to CPU i (wrapping around the
    # CPUs the server may use).  pin_workers
    def pin_workers(enabled = true)
      @config[:pin_workers] = enabled ? true : false
    end

    # RACK_ENV.  environment "production"
    def environment(name)
      @config[:environment] = string(:environment, name)
    end

    def rackup(path)
      @config[:rackup] = string(:rackup, path)
    end

    # One line per request on stdout: log_requests (Apache common format
    # plus the duration, as Puma), log_requests :json, log_requests false.
    # (On the command line: --log-requests, --log-format json.)
    def log_requests(format = true)
      @config[:log_requests] = Configuration.log_format(format, label: @label.call(:log_requests))
    end

    # The control server: GET /stats and /metrics.
    #   control_url "tcp://127.0.0.1:9293"; control_token "secret"
    #   control_url "unix:///run/app/control.sock"   (no token needed)
    def control_url(url)
      @config[:control_url] = string(:control_url, url)
    end

    # The token, kept out of the process list (`ps` shows argv): give it
    # in a file, or in the environment (BUTTERFLIES_CONTROL_TOKEN, which
    # the command line and this file override).
    #   control_token_file "/run/secrets/butterflies-token"
    def control_token(token)
      @config[:control_token] = string(:control_token, token)
    end

    def control_token_file(path)
      token = File.read(string(:control_token_file, path)).strip
      raise ConfigError, "#{@label.call(:control_token_file)} #{path} is empty" if token.empty?

      @config[:control_token] = token
    rescue SystemCallError => e
      raise ConfigError, "#{@label.call(:control_token_file)}: cannot read #{path}: #{e.message}"
    end

    # Trust X-Request-Start from the proxy in front (/metrics'
    # butterflies_proxy_queue_seconds).  trust_request_start
    def trust_request_start(enabled = true)
      @config[:trust_request_start] = enabled ? true : false
    end

    # App threads poll the IO loops themselves, without IO threads
    # (docs/ARCHITECTURE.md, "Two shapes").  inline_io
    def inline_io(enabled = true)
      @config[:inline_io] = enabled ? true : false
    end

    def quiet(enabled = true)
      @config[:quiet] = enabled ? true : false
    end

    def pidfile(path)
      @config[:pidfile] = string(:pidfile, path)
    end

    # Puma's stdout_redirect: stdout_redirect "log/out.log", "log/err.log", true
    # (append). `butterflies ctl reopen-logs` (SIGURG) reopens them.
    def stdout_redirect(stdout = nil, stderr = nil, append = false)
      redirect_stdout(stdout) if stdout
      redirect_stderr(stderr) if stderr
      redirect_append(append)
    end

    def redirect_stdout(path)
      @config[:redirect_stdout] = string(:redirect_stdout, path)
    end

    def redirect_stderr(path)
      @config[:redirect_stderr] = string(:redirect_stderr, path)
    end

    def redirect_append(enabled = true)
      @config[:redirect_append] = enabled ? true : false
    end

    # The state file for `butterflies ctl -S PATH`: pid, control URL, token.
    def state_path(path)
      @config[:state_path] = string(:state_path, path)
    end

    # TCP_FASTOPEN on TCP listeners, with this queue length (opt-in).
    def tcp_fastopen(queue = 256)
      queue = { true => 256, false => 0 }.fetch(queue, queue)
      @config[:tcp_fastopen] = count(:tcp_fastopen, queue)
    end

    # Shapes the response to an app exception, and is the place to report
    # it to an error tracker (Puma's name and arguments):
    #   lowlevel_error_handler do |exception, env, status|
    #     Sentry.capture_exception(exception)
    #     [500, { "content-type" => "text/plain" }, ["Sorry\n"]]
    #   end
    def lowlevel_error_handler(handler = nil, &block)
      handler ||= block
      raise ConfigError, "lowlevel_error_handler needs a block or a callable" unless handler.respond_to?(:call)

      @config[:lowlevel_error_handler] = handler
    end

    # Hooks: before_fork {}  on_worker_boot { |index| }
    # on_worker_shutdown { |index| }  before_exec {}
    Configuration::HOOKS.each do |name|
      define_method(name) do |&block|
        raise ConfigError, "#{name} needs a block" unless block

        @config.hooks[name] << block
      end
    end

    # Every other count and duration in the table of options is a
    # directive of its own name (Configuration::OPTIONS):
    #   workers 4; io_threads 2; queue_depth 512; request_timeout 30
    Configuration::OPTIONS.each do |name, option|
      next if method_defined?(name) || option[:directive] == false

      case option[:kind]
      when :count then define_method(name) { |value| @config[name] = count(name, value) }
      when :seconds then define_method(name) { |value| @config[name] = seconds(name, value) }
      end
    end

    def method_missing(name, *_args)
      raise ConfigError, "unknown option #{name}"
    end

    def respond_to_missing?(_name, _include_private = false)
      false
    end

    private

    # A count within its option's bounds (Configuration.count_range).
    def count(name, value)
      range = Configuration.count_range(name)
      integer(name, value, min: range.begin, max: range.end)
    end

    def integer(name, value, min:, max: Configuration::MAX_COUNT)
      number = Integer(value, 10, exception: false) if value.is_a?(String)
      number = value if value.is_a?(Integer)
      if number.nil? || number < min || number > max
        raise ConfigError, "#{@label.call(name)} must be a whole number from #{min} to #{max}, got #{value.inspect}"
      end

      number
    end

    def seconds(name, value)
      Configuration.seconds(name, value, label: @label.call(name))
    end

    def string(name, value)
      raise ConfigError, "#{@label.call(name)} must be a string, got #{value.inspect}" unless value.is_a?(String) && !value.empty?

      value
    end
  end
end
