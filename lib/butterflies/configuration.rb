# frozen_string_literal: true

module Butterflies
  # The resolved settings of a server: defaults, then the config file, then
  # the command line (each overriding the one before). Every value is checked
  # when it is set, so a mistake is reported before anything binds.
  class Configuration
    DEFAULT_PATH = "config/butterflies.rb"

    DEFAULTS = {
      binds: [],
      threads: 5,
      # App threads added while all are busy with the GVL free (blocked in
      # IO or sleep), up to this many; `threads N` alone sets both.
      max_threads: 64,
      io_threads: nil, # number of CPUs
      workers: 0,
      preload_app: false,
      # Pin worker i (all its threads) to CPU i (wrapping), as nginx's
      # worker_cpu_affinity: no hand-off between its threads crosses cores.
      pin_workers: false,
      environment: nil, # RACK_ENV, else development
      rackup: "config.ru",
      quiet: false,
      # One access log line per request on stdout, written by Rust off the
      # request path: false, "common" (Apache's, plus the duration, as
      # Puma's log_requests) or "json".
      log_requests: false,
      # The control server (/stats, /metrics): tcp://HOST:PORT (needs the
      # token) or unix:///path; off by default.
      control_url: nil,
      control_token: nil,
      # Trust a proxy's X-Request-Start (t=seconds.fraction, or ms, or us)
      # for the proxy queue time histogram, as autoscalers measure it.
      trust_request_start: false,
      pidfile: nil,
      # pid, control URL and token for `butterflies ctl -S PATH` (mode 0600).
      state_path: nil,
      # stdout_redirect: where $stdout and $stderr go (every process), and
      # whether boot appends to them (a hot restart always appends).
      redirect_stdout: nil,
      redirect_stderr: nil,
      redirect_append: false,
      shutdown_timeout: 30.0,
      worker_timeout: 60.0,
      request_timeout: nil,
      request_hard_timeout: nil,
      queue_depth: 1024,
      # Microseconds an IO thread keeps polling after its last event before
      # it sleeps, and an app thread reads the connection it just answered
      # for its next request before handing it back: a halted core is slow
      # to wake (0: neither).
      idle_spin: 50,
      backlog: 1024,
      tcp_fastopen: 0,
      idle_timeout: 20.0,
      header_timeout: 20.0,
      body_timeout: 30.0,
      write_timeout: 30.0,
      max_body_bytes: 1 << 30,
      max_head_bytes: 80 * 1024,
      max_target_bytes: 16 * 1024,
      max_header_fields: 100,
      max_field_bytes: 16 * 1024,
      # Response bytes all connections of a process may leave with the IO
      # threads for slow clients, so app threads need not wait for them.
      max_parked_bytes: 256 << 20,
      # Past those, bytes spilled to unlinked temporary files (in TMPDIR)
      # and sent from there; past both, the slowest clients are closed.
      max_spilled_bytes: 4 << 30,
      # Called with (exception, env, status) when the app raises; returns
      # the Rack response to send instead of a plain 500 (Puma's name).
      lowlevel_error_handler: nil
    }.freeze

    HOOKS = %i[before_fork on_worker_boot on_worker_shutdown before_exec].freeze

    # Durations in seconds: finite, above 0 and at most a day (the engine
    # keeps them as Rust Durations). shutdown_timeout may be 0: do not wait
    # for requests in flight.
    SECONDS = %i[shutdown_timeout worker_timeout request_timeout request_hard_timeout
                 idle_timeout header_timeout body_timeout write_timeout].freeze
    MAX_SECONDS = 86_400
    ZERO_SECONDS_ALLOWED = %i[shutdown_timeout].freeze

    # Whole numbers the engine keeps as 64-bit sizes and counts.
    COUNTS = %i[threads max_threads io_threads workers queue_depth idle_spin backlog tcp_fastopen
                max_body_bytes max_head_bytes max_target_bytes max_header_fields max_field_bytes
                max_parked_bytes max_spilled_bytes].freeze
    MAX_COUNT = 2**62
    # Counts with a lower ceiling: the shared stats region has a slot for
    # each live worker (and room for restarts to run one beside another).
    MAX = { workers: Stats::MAX_WORKERS }.freeze
    # Counts that must be at least 1 (the engine raises on a 0 for the
    # first six; a listen backlog or body limit of 0 serves nobody).
    AT_LEAST_ONE = %i[io_threads queue_depth max_head_bytes max_target_bytes max_header_fields
                      max_field_bytes backlog max_body_bytes].freeze

    # `value` as seconds for `key`, or a ConfigError naming `label` (a
    # flag, or the directive).
    def self.seconds(key, value, label: key)
      number = Float(value, exception: false) if value.is_a?(Numeric) || value.is_a?(String)
      return number if number && seconds_in_range?(key, number)

      low = ZERO_SECONDS_ALLOWED.include?(key) ? ">= 0" : "above 0"
      raise ConfigError, "#{label} must be a number of seconds #{low} and at most #{MAX_SECONDS}, got #{value.inspect}"
    end

    def self.seconds_in_range?(key, number)
      low_ok = ZERO_SECONDS_ALLOWED.include?(key) ? number >= 0 : number.positive?
      number.finite? && low_ok && number <= MAX_SECONDS
    end

    LOG_FORMATS = %w[common json].freeze

    # An access log setting: false (off), true ("common"), or a format name.
    def self.log_format(value, label: :log_requests)
      return false if value.nil? || value == false
      return "common" if value == true
      return value.to_s if LOG_FORMATS.include?(value.to_s)

      raise ConfigError, "#{label} must be true, false or one of #{LOG_FORMATS.join(', ')}, got #{value.inspect}"
    end

    # The smallest value `key` may have, if it is a count.
    def self.min_count(key)
      AT_LEAST_ONE.include?(key) ? 1 : 0
    end

    attr_reader :path, :hooks

    # The control token, if the environment gives it (below the config
    # file and the command line).
    TOKEN_ENV = "BUTTERFLIES_CONTROL_TOKEN"

    def initialize
      @values = DEFAULTS.dup
      @values[:control_token] = ENV[TOKEN_ENV] unless ENV[TOKEN_ENV].to_s.empty?
      @hooks = HOOKS.to_h { |name| [name, []] }
      @path = nil
      @given = []
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
      DSL.new(self, file).instance_eval(File.read(file), File.expand_path(file), 1)
    rescue ConfigError => e
      raise ConfigError, located(e, file)
    rescue SyntaxError => e
      line, message = e.message.lines.first.to_s.match(/:(\d+): (.*)/)&.captures
      raise ConfigError, "#{file}:#{line}: #{message&.strip || 'syntax error'}"
    rescue ScriptError, StandardError => e
      raise ConfigError, located(e, file, prefix: "#{e.class}: ")
    end

    def merge!(options)
      options.each { |key, value| self[key] = value }
      self
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
      @values[key] = value
    end

    # The values set on this configuration, defaults left out (the
    # command line's, to lay over the config file's).
    def given
      @values.slice(*@given)
    end

    # Settings that cannot work together, refused before anything binds.
    def check_mode!
      Control.parse(self[:control_url], self[:control_token]) if self[:control_url]
      return if cluster? || self[:request_hard_timeout].nil?

      raise ConfigError, "request_hard_timeout needs cluster mode (workers >= 1): a stuck worker is " \
                         "replaced, but a stuck thread cannot be stopped safely in a single process"
    end

    def to_h
      @values.dup
    end

    # "tcp://0.0.0.0:9292" when nothing else was asked for.
    def binds
      self[:binds].empty? ? ["tcp://0.0.0.0:9292"] : self[:binds]
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
      lines
    end

    # The resolved configuration, one "key: value" line each (--dry-run).
    def dump
      lines = @values.merge(binds: binds).map { |key, value| "#{key}: #{value.inspect}" }
      lines += @hooks.reject { |_, procs| procs.empty? }.map { |name, procs| "#{name}: #{procs.size} hook(s)" }
      lines << "config file: #{@path || '(none)'}"
      lines.join("\n")
    end

    private

    def check_count(key, value)
      min = Configuration.min_count(key)
      max = MAX.fetch(key, MAX_COUNT)
      return if value.is_a?(Integer) && value.between?(min, max)

      raise ConfigError, "#{key} must be a whole number from #{min} to #{max}, got #{value.inspect}"
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
