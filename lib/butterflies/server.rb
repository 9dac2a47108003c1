# frozen_string_literal: true

module Butterflies
  # One Butterflies process in single mode: binds, starts the Rust IO threads
  # and the Ruby app threads, and waits for a signal to stop gracefully.
  #
  # Signal handlers only record the signal and wake the main thread through a
  # pipe; the main thread does the work (see docs/ARCHITECTURE.md).
  class Server
    DEFAULT_THREADS = 5
    DEFAULT_SHUTDOWN_TIMEOUT = 30
    STOP_SIGNALS = %w[INT TERM].freeze
    # Options passed to the Rust engine as they are (seconds and bytes).
    ENGINE_OPTIONS = %i[
      idle_timeout header_timeout body_timeout write_timeout
      max_head_bytes max_target_bytes max_header_fields max_field_bytes max_body_bytes
      queue_depth backlog
    ].freeze

    attr_reader :app, :options, :addresses

    # options:
    #   binds:            ["tcp://127.0.0.1:9292", ...]
    #   threads:          Ruby app threads (default 5)
    #   io_threads:       Rust IO threads (default: number of CPUs)
    #   shutdown_timeout: seconds in-flight requests get after a stop signal
    #   idle_timeout, header_timeout, body_timeout, write_timeout: seconds
    #   max_head_bytes, max_target_bytes, max_header_fields, max_field_bytes,
    #   max_body_bytes:   request limits (431, 414, 431, 431, 413 past them)
    #   quiet:            no boot banner
    #   log:              IO for the banner and shutdown lines (default $stdout)
    def initialize(app, options = {})
      @app = app
      @options = options
      @threads = Integer(options.fetch(:threads, DEFAULT_THREADS))
      @io_threads = Integer(options[:io_threads] || Etc.nprocessors)
      @shutdown_timeout = Float(options.fetch(:shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT))
      @log = options.fetch(:log, $stdout)
      @binds = Array(options.fetch(:binds, ["tcp://0.0.0.0:9292"]))
      raise ConfigError, "threads must be at least 1 (got #{@threads})" if @threads < 1
      raise ConfigError, "io_threads must be at least 1 (got #{@io_threads})" if @io_threads < 1

      @signals = []
      @wake_reader, @wake_writer = IO.pipe
    end

    # Binds, serves until INT or TERM (or #stop), then drains and returns.
    def run
      bind
      install_traps
      start
      wait_for_stop
      shutdown
    end

    # Binds the listening sockets. Raises BindError (port in use, ...).
    def bind
      addresses = @binds.map { |uri| Binds.to_address(uri) }
      engine_options = @options.slice(*ENGINE_OPTIONS).compact
      @engine = Engine.new(addresses, io_threads: @io_threads, shutdown_timeout: @shutdown_timeout, **engine_options)
      @addresses = @engine.addresses
    end

    # Starts the IO threads and the app threads. Nothing here may run
    # before a cluster master forks.
    def start
      @engine.start
      base = base_env.freeze
      reporter = method(:report_app_error)
      @app_threads = Array.new(@threads) do |i|
        Thread.new do
          Thread.current.name = "butterflies-app-#{i}"
          serve(base, reporter)
        end
      end
      banner
    end

    # Asks the server to stop gracefully; safe from any thread or a trap.
    def stop
      @signals << "stop"
      @wake_writer.write_nonblock(".", exception: false)
    end

    def stats
      @engine&.stats || {}
    end

    private

    def serve(base, reporter)
      @engine.serve(@app, base, reporter)
    rescue Exception => e # rubocop:disable Lint/RescueException
      # The app let through something that is not an app error (SystemExit,
      # a signal): that request's connection was closed; keep this thread.
      warn "butterflies: app thread got #{e.class}: #{e.message}"
      retry unless @stopping
    end

    def base_env
      {
        "rack.version" => [1, 3].freeze,
        "rack.errors" => $stderr,
        "rack.multithread" => true,
        "rack.multiprocess" => false,
        "rack.run_once" => false,
        "rack.url_scheme" => "http",
        "rack.hijack?" => true,
        "SCRIPT_NAME" => "",
        "SERVER_SOFTWARE" => "butterflies #{VERSION}"
      }
    end

    def install_traps
      STOP_SIGNALS.each do |signal|
        Signal.trap(signal) do
          @signals << signal
          @wake_writer.write_nonblock(".", exception: false)
        end
      end
    end

    def wait_for_stop
      loop do
        IO.select([@wake_reader])
        @wake_reader.read_nonblock(64, exception: false)
        signal = @signals.shift
        break if signal
      end
    end

    def shutdown
      @stopping = true
      say "Stopping (waiting up to #{@shutdown_timeout.round(1)}s for requests in flight)"
      @engine.stop
      deadline = monotonic + @shutdown_timeout + 1
      @app_threads.each { |t| t.join([deadline - monotonic, 0].max) }
      unfinished = @app_threads.count(&:alive?)
      if unfinished.zero?
        @engine.join
      else
        warn "butterflies: #{unfinished} app threads still busy after #{@shutdown_timeout}s; exiting anyway"
      end
      say "Goodbye"
    end

    def report_app_error(error, env)
      where = env ? " handling #{env['REQUEST_METHOD']} #{env['PATH_INFO']}" : ""
      lines = ["butterflies: app error#{where}: #{error.class}: #{error.message}"]
      lines.concat(Array(error.backtrace).map { |line| "\t#{line}" })
      $stderr.write(lines.join("\n") << "\n")
    end

    def banner
      say "Butterflies #{VERSION} (ruby #{RUBY_VERSION}), pid #{Process.pid}"
      say "* threads: #{@threads} app, #{@io_threads} io"
      @addresses.each { |address| say "* Listening on #{Binds.to_url(address)}" }
      say "Use Ctrl-C to stop"
    end

    def say(line)
      return if @options[:quiet]

      @log.puts(line)
      @log.flush
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
