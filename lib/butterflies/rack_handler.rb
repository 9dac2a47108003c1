# frozen_string_literal: true

module Butterflies
  # The Rack handler behind `rackup -s butterflies` and
  # `rails server -u butterflies`, registered as Rackup::Handler::Butterflies
  # (rackup 2, Rack 3: lib/rackup/handler/butterflies.rb) and as
  # Rack::Handler::Butterflies (Rack 2: lib/rack/handler/butterflies.rb).
  #
  # Settings come as from the CLI: defaults, then config/butterflies.rb (or
  # the file BUTTERFLIES_CONFIG names), then only the options the user gave
  # on the command line (rackup and Rails pass defaults too, such as port
  # 9292 or 3000, which must not override a `bind` in the file). Threads come
  # from RAILS_MAX_THREADS when set (Rails' convention: Active Record's pool
  # has the same size), workers from WEB_CONCURRENCY, as Puma reads them.
  #
  # The registries keep a handler by its constant's name, so each defines a
  # module of its own that extends this one.
  module RackHandler
    DEFAULT_OPTIONS = { Host: "0.0.0.0", Port: 9292 }.freeze
    CONFIG_ENV = "BUTTERFLIES_CONFIG"
    # rackup's default hosts, which it passes as if they were given.
    RACKUP_DEFAULT_HOSTS = %w[localhost 0.0.0.0].freeze

    # A mistake in the config file, the options or the environment, or
    # an address that cannot be bound, ends the process with one line on
    # stderr and the CLI's exit status, as `butterflies` does.
    def run(app, **options)
      config = configuration(options)
      @server = if config.cluster?
                  Cluster.new(config, loader: -> { app }, cli: overrides(options), config_path: config.path,
                                      log: $stdout, embedded: true)
                else
                  Server.new(app, config)
                end
      yield @server if block_given?
      @server.run
    rescue ConfigError, BindError => e
      warn "butterflies: #{e.message}"
      exit(e.is_a?(ConfigError) ? EXIT_USAGE : EXIT_FAILURE)
    end

    # rackup's INT trap calls this when it is still installed.
    def shutdown
      @server&.stop
    end

    def valid_options
      {
        "Host=HOST" => "Hostname to listen on (default: #{DEFAULT_OPTIONS[:Host]})",
        "Port=PORT" => "Port to listen on (default: #{DEFAULT_OPTIONS[:Port]})",
        "Threads=N" => "App threads (default: RAILS_MAX_THREADS, else #{Server::DEFAULT_THREADS})",
        "Workers=N" => "Worker processes (default: WEB_CONCURRENCY, else 0)",
        "IoThreads=N" => "Rust IO threads (default: number of CPUs)",
        "Quiet" => "No boot banner"
      }
    end

    # The resolved Configuration for these handler options.
    def configuration(options)
      path = ENV.fetch(CONFIG_ENV, nil) || (Configuration::DEFAULT_PATH if File.file?(Configuration::DEFAULT_PATH))
      config = Configuration.new
      config.default_host = default_host_port(options).first
      config.load_file(path) if path
      config.merge!(overrides(options), from: "the server's options")
      # rackup's and Rails' default host and port, unless the file binds.
      config[:binds] = Binds.for_host(*default_host_port(options)) if config[:binds].empty?
      config[:max_threads] = config[:threads] if config[:max_threads] < config[:threads]
      config
    end

    private

    # What overrides the config file: the environment, then the options
    # the user gave.
    def overrides(options)
      environment_options.merge(given_options(options))
    end

    def default_host_port(options)
      [options[:Host] || DEFAULT_OPTIONS[:Host], options[:Port] || DEFAULT_OPTIONS[:Port]]
    end

    def environment_options
      threads = positive_env("RAILS_MAX_THREADS")
      workers = positive_env("WEB_CONCURRENCY")
      { threads: threads, max_threads: threads, workers: workers }.compact
    end

    def positive_env(name)
      value = ENV.fetch(name, nil)
      return nil if value.nil? || value.strip.empty?

      number = Integer(value, 10, exception: false)
      raise ConfigError, "#{name} must be a whole number, got #{value.inspect}" if number.nil? || number.negative?

      number
    end

    # Only what the user gave: Rails says which (user_supplied_options);
    # rackup passes everything, so its default host and port count as
    # not given.
    def given_options(options)
      supplied = options[:user_supplied_options]
      given = lambda do |key, default|
        supplied ? supplied.include?(key) : options.key?(key) && !default.include?(options[key])
      end
      result = {}
      if given.call(:Host, RACKUP_DEFAULT_HOSTS) || given.call(:Port, [DEFAULT_OPTIONS[:Port], DEFAULT_OPTIONS[:Port].to_s])
        result[:binds] = Binds.for_host(*default_host_port(options))
      end
      result.merge!(counts(options))
      result[:quiet] = true if options[:Quiet] || options[:Silent]
      result
    end

    # Thread and worker counts, as rackup's -O and Rails pass them.
    def counts(options)
      threads = options[:Threads] || options[:threads]
      workers = options[:Workers] || options[:workers]
      {
        threads: (Integer(threads) if threads),
        max_threads: (Integer(threads) if threads),
        workers: (Integer(workers) if workers),
        io_threads: (Integer(options[:IoThreads]) if options[:IoThreads])
      }.compact
    end
  end
end
