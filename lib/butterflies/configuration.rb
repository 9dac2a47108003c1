# frozen_string_literal: true

module Butterflies
  # The resolved settings of a server: defaults, then the config file, then
  # the command line (each overriding the one before). Every value is checked
  # when it is set, so a mistake is reported before anything binds.
  class Configuration
    DEFAULT_PATH = "config/butterflies.rb"

    # Every option, declared once: its kind (:count, :seconds; others are
    # taken as given), default, bounds and --help text. The engine's come
    # from the engine (Engine::SETTINGS, declared in src/net/settings.rs);
    # these are the Ruby side's. DEFAULTS, the checks below, the config
    # file's directives (DSL) and the command line's flags (CLI) are all
    # derived from this one table.
    RUBY_OPTIONS = {
      binds: { default: [] },
      threads: { kind: :count, default: 5, min: 0 },
      # App threads added while all are busy with the GVL free (blocked in
      # IO or sleep), up to this many; `threads N` alone sets both.
      max_threads: { kind: :count, default: 64, min: 1, directive: false },
      io_threads: { kind: :count, default: nil, min: 1, default_text: "CPUs, or CPUs / workers",
                    help: "Rust IO threads per process" },
      workers: { kind: :count, default: 0, min: 0, max: Stats::MAX_WORKERS },
      preload_app: { default: false },
      # Pin worker i (all its threads) to CPU i (wrapping), as nginx's
      # worker_cpu_affinity: no hand-off between its threads crosses cores.
      pin_workers: { default: false },
      environment: { default: nil }, # RACK_ENV, else development
      rackup: { default: "config.ru" },
      quiet: { default: false },
      # One access log line per request on stdout, written by Rust off the
      # request path: false, "common" (Apache's, plus the duration, as
      # Puma's log_requests) or "json".
      log_requests: { default: false },
      # The control server (/stats, /metrics): tcp://HOST:PORT (needs the
      # token) or unix:///path; off by default.
      control_url: { default: nil },
      control_token: { default: nil },
      # Trust a proxy's X-Request-Start (t=seconds.fraction, or ms, or us)
      # for the proxy queue time histogram, as autoscalers measure it.
      trust_request_start: { default: false },
      # No IO threads: each app thread polls an IO loop itself and serves
      # what it reads (docs/ARCHITECTURE.md, "Two shapes").
      inline_io: { default: false },
      # The proxies whose PROXY protocol header is believed, as addresses
      # or CIDR ranges; needed by a TCP bind with ?proxy_protocol=.
      proxy_from: { default: [] },
      pidfile: { default: nil },
      # pid, control URL and token for `butterflies ctl -S PATH` (mode 0600).
      state_path: { default: nil },
      # stdout_redirect: where $stdout and $stderr go (every process), and
      # whether boot appends to them (a hot restart always appends).
      redirect_stdout: { default: nil },
      redirect_stderr: { default: nil },
      redirect_append: { default: false },
      worker_timeout: { kind: :seconds, default: 60.0, zero: false, help: "Replace a worker silent this long" },
      # On TERM, go on serving this long with /ready saying 503 and every
      # response closing its connection, then stop (a load balancer takes
      # the server out of rotation meanwhile).
      drain_delay: { kind: :seconds, default: 0.0, zero: true,
                     help: "On TERM, serve this long with /ready 503 and Connection: close, then stop" },
      # Replace a worker whose private memory (USS) passes this many MB,
      # a successor first; kill one past the hard limit.
      worker_memory_limit: { kind: :count, default: nil, min: 1, help: "Replace a worker past this many MB of USS" },
      worker_memory_hard_limit: { kind: :count, default: nil, min: 1,
                                  help: "Kill a worker past this many MB of USS" },
      # Called with (exception, env, status) when the app raises; returns
      # the Rack response to send instead of a plain 500 (Puma's name).
      lowlevel_error_handler: { default: nil }
    }.freeze

    OPTIONS = RUBY_OPTIONS.merge(Engine::SETTINGS).freeze
    DEFAULTS = OPTIONS.transform_values { |option| option[:default] }.freeze

    HOOKS = %i[before_fork on_worker_boot on_worker_shutdown before_exec].freeze

    # Durations in seconds: finite, above 0 (or at least 0, `zero:`) and at
    # most a day (the engine keeps them as Rust Durations).
    SECONDS = OPTIONS.select { |_, option| option[:kind] == :seconds }.keys.freeze
    MAX_SECONDS = Engine::MAX_SECONDS
    # Whole numbers, from the option's min (default 0) to its max.
    COUNTS = OPTIONS.select { |_, option| option[:kind] == :count }.keys.freeze
    MAX_COUNT = 2**62

    # `value` as seconds for `key`, or a ConfigError naming `label` (a
    # flag, or the directive).
    def self.seconds(key, value, label: key)
      number = Float(value, exception: false) if value.is_a?(Numeric) || value.is_a?(String)
      return number if number && seconds_in_range?(key, number)

      low = OPTIONS.dig(key, :zero) ? ">= 0" : "above 0"
      raise ConfigError, "#{label} must be a number of seconds #{low} and at most #{MAX_SECONDS.to_i}, got #{value.inspect}"
    end

    def self.seconds_in_range?(key, number)
      low_ok = OPTIONS.dig(key, :zero) ? number >= 0 : number.positive?
      number.finite? && low_ok && number <= MAX_SECONDS
    end

    # The bounds of count `key`.
    def self.count_range(key)
      option = OPTIONS.fetch(key)
      (option.fetch(:min, 0)..option.fetch(:max, MAX_COUNT))
    end

    # What --help says of `key`'s default: "30", "256 MiB", "off".
    def self.default_text(key)
      option = OPTIONS.fetch(key)
      value = option[:default]
      return option[:default_text] if option[:default_text]
      return "off" if value.nil?
      return format("%g", value) if value.is_a?(Float)

      key.end_with?("_bytes") ? byte_size(value) : value.to_s
    end

    # 1073741824 as "1 GiB", 81920 as "80 KiB".
    def self.byte_size(bytes)
      unit, shift = { "GiB" => 30, "MiB" => 20, "KiB" => 10 }.find { |_, s| bytes.nonzero? && (bytes % (1 << s)).zero? }
      unit ? "#{bytes >> shift} #{unit}" : bytes.to_s
    end

    LOG_FORMATS = %w[common json].freeze

    # An access log setting: false (off), true ("common"), or a format name.
    def self.log_format(value, label: :log_requests)
      return false if value.nil? || value == false
      return "common" if value == true
      return value.to_s if LOG_FORMATS.include?(value.to_s)

      raise ConfigError, "#{label} must be true, false or one of #{LOG_FORMATS.join(', ')}, got #{value.inspect}"
    end

    attr_reader :path, :hooks
    # The host a bare `port` directive listens on: 0.0.0.0, or the host
    # `rails server` or rackup was given (localhost in development), as
    # Puma's handler does.
    attr_accessor :default_host

    # The control token, if the environment gives it (below the config
    # file and the command line).
    TOKEN_ENV = "BUTTERFLIES_CONTROL_TOKEN"

    def initialize
      @values = DEFAULTS.dup
      @values[:control_token] = ENV[TOKEN_ENV] unless ENV[TOKEN_ENV].to_s.empty?
      @hooks = HOOKS.to_h { |name| [name, []] }
      @path = nil
      @given = []
      @default_host = "0.0.0.0"
      @origins = {}
      @setting_from = "the defaults"
    end

    # Defaults, then the file (if any), then `cli` (a Hash of the flags that
    # were given). `path`: an explicit -C file (must exist), or nil for
    # config/butterflies.rb when present.
    def self.load(cli = {}, path: nil)
      new.tap do |config|
        file = path || (DEFAULT_PATH if File.file?(DEFAULT_PATH))
        config.load_file(file, explicit: !path.nil?) if file
        config.merge!(cli)
      end
    end

    def load_file(file, explicit: true)
      raise ConfigError, "no config file #{file}" if explicit && !File.file?(file)

      evaluate(file)
    end

    def evaluate(file)
      @path = file
      @setting_from = file
      DSL.new(self, file).instance_eval(File.read(file), File.expand_path(file), 1)
    rescue ConfigError => e
      raise ConfigError, located(e, file)
    rescue SyntaxError => e
      line, message = e.message.lines.first.to_s.match(/:(\d+): (.*)/)&.captures
      raise ConfigError, "#{file}:#{line}: #{message&.strip || 'syntax error'}"
    rescue ScriptError, StandardError => e
      raise ConfigError, located(e, file, prefix: "#{e.class}: ")
    end

    # `from`: where the values come from, as the banner names it.
    def merge!(options, from: "the command line")
      @setting_from = from
      options.each { |key, value| self[key] = value }
      self
    end

    # Where `key`'s value came from: a config file, "the command line", ...
    def origin(key)
      @origins.fetch(key, "the defaults")
    end

    def [](key)
      @values.fetch(key)
    end

    # Sets a value; durations and counts are checked here too, for values
    # that come from a Hash (the Rack handler) rather than the CLI or DSL.
    def []=(key, value)
      raise ConfigError, "unknown option #{key}" unless @values.key?(key)

      value = Configuration.seconds(key, value) if SECONDS.include?(key) && !value.nil?
      value = Configuration.log_format(value) if key == :log_requests
      check_count(key, value) if COUNTS.include?(key) && !value.nil?
      @given |= [key]
      @origins[key] = @setting_from
      @values[key] = value
    end

    # The values set on this configuration, defaults left out (the
    # command line's, to lay over the config file's).
    def given
      @values.slice(*@given)
    end

    # Settings that cannot work together, refused before anything binds.
    def check_mode!
      env_port
      check_proxy!
      Control.parse(self[:control_url], self[:control_token]) if self[:control_url]
      return if cluster? || self[:request_hard_timeout].nil?

      raise ConfigError, "request_hard_timeout needs cluster mode (workers >= 1): a stuck worker is " \
                         "replaced, but a stuck thread cannot be stopped safely in a single process"
    end

    def to_h
      @values.dup
    end

    # proxy_from trusts proxies for binds with the PROXY protocol on: one
    # without the other is a mistake (the engine refuses a TCP bind with
    # it on and nobody trusted).
    def check_proxy!
      proxied = binds.map { |uri| Binds.parse(uri) }.select(&:proxy_protocol)
      trusted = !self[:proxy_from].empty?
      raise ConfigError, "proxy_from is set but no bind has ?proxy_protocol=v1|v2|any" if proxied.empty? && trusted

      untrusted_tcp!(proxied.find { |bind| !bind.unix? }) unless trusted
    end

    def untrusted_tcp!(tcp)
      return unless tcp

      raise ConfigError, "bind #{tcp.host}:#{tcp.port}: proxy_protocol needs proxy_from (the addresses of the " \
                         "proxies whose header to believe)"
    end

    # "tcp://0.0.0.0:$PORT" (else 9292) when no bind or port was asked for
    # anywhere: a Procfile on a PaaS sets PORT and passes no flag.
    def binds
      self[:binds].empty? ? ["tcp://0.0.0.0:#{env_port || 9292}"] : self[:binds]
    end

    # Some ssl:// bind has no certificate: the development one is used.
    def dev_cert?
      binds.any? { |uri| Binds.parse(uri).tls&.dev_cert? }
    end

    PORT_ENV = "PORT"

    # PORT from the environment, if set; a ConfigError if not a port.
    def env_port
      value = ENV.fetch(PORT_ENV, "").strip
      return nil if value.empty?

      port = Integer(value, 10, exception: false)
      return port if port&.between?(0, 65_535)

      raise ConfigError, "#{PORT_ENV} must be a port number from 0 to 65535, got #{value.inspect}"
    end

    def cluster?
      self[:workers].positive?
    end

    # "5-64" (grows on demand), or "5".
    def thread_range
      min = self[:threads]
      max = self[:max_threads]
      max && max > min ? "#{min}-#{max}" : min.to_s
    end

    # What the boot banner says of where the settings came from.
    def banner_lines
      environment = ENV["RACK_ENV"] || self[:environment] || "development"
      lines = ["* environment: #{environment}, config file: #{@path || 'none'}, rackup: #{self[:rackup]}"]
      lines << "* access log: #{self[:log_requests]}" if self[:log_requests]
      lines << port_note if port_note
      lines
    end

    # The resolved configuration, one "key: value" line each (--dry-run).
    def dump
      lines = @values.merge(binds: binds).map { |key, value| "#{key}: #{value.inspect}" }
      lines += @hooks.reject { |_, procs| procs.empty? }.map { |name, procs| "#{name}: #{procs.size} hook(s)" }
      lines << "config file: #{@path || '(none)'}"
      lines.join("\n")
    end

    # PORT is set, but the binds came from elsewhere and use another port.
    def port_note
      port = env_port or return nil
      return nil if self[:binds].empty? || self[:binds].any? { |uri| uri.end_with?(":#{port}") }

      "* PORT=#{port} not used: #{origin(:binds)} gives the binds"
    end

    private

    def check_count(key, value)
      range = Configuration.count_range(key)
      return if value.is_a?(Integer) && range.cover?(value)

      raise ConfigError, "#{key} must be a whole number from #{range.begin} to #{range.end}, got #{value.inspect}"
    end

    # "config/butterflies.rb:3: workers must be ..." from the line of the
    # file the error came from.
    def located(error, file, prefix: "")
      full = File.expand_path(file)
      line = Array(error.backtrace_locations).find { |l| l.absolute_path == full || l.path == full }&.lineno
      "#{file}#{":#{line}" if line}: #{prefix}#{error.message.sub(/ for #<Butterflies::DSL.*\z/m, '')}"
    end
  end
end
