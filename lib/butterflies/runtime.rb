# frozen_string_literal: true

module Butterflies
  # The serving part of a process: the Rust IO threads of a bound engine and
  # the Ruby app threads that take its requests. Used by single mode and by
  # each cluster worker; nothing here forks.
  class Runtime
    attr_reader :engine

    def initialize(engine, app, config, log:)
      @engine = engine
      @app = app
      @config = config
      @log = log
      @stopping = false
    end

    # Starts the IO threads, then the app threads.
    def start
      @engine.start
      base = base_env.freeze
      reporter = method(:report_app_error)
      @threads = Array.new(@config[:threads]) do |i|
        Thread.new do
          Thread.current.name = "butterflies-app-#{i}"
          serve(base, reporter)
        end
      end
      self
    end

    # Stops accepting, lets requests in flight finish (up to the shutdown
    # timeout) and returns whether every app thread finished.
    def stop
      @stopping = true
      @engine.stop
      timeout = @config[:shutdown_timeout]
      deadline = monotonic + timeout + 1
      @threads.each { |t| t.join([deadline - monotonic, 0].max) }
      unfinished = @threads.count(&:alive?)
      if unfinished.zero?
        @engine.join
        true
      else
        warn "butterflies: #{unfinished} app threads still busy after #{timeout}s; exiting anyway"
        false
      end
    end

    def stats
      @engine.stats
    end

    private

    def serve(base, reporter)
      @engine.serve(@app, base, reporter)
    rescue Exception => e # rubocop:disable Lint/RescueException
      # Not an app error (SystemExit, a signal exception): that request's
      # connection was closed; this thread goes on serving.
      warn "butterflies: app thread got #{e.class}: #{e.message}"
      retry unless @stopping
    end

    def base_env
      {
        "rack.version" => [1, 3].freeze,
        "rack.errors" => $stderr,
        "rack.multithread" => @config[:threads] > 1,
        "rack.multiprocess" => @config[:workers].positive?,
        "rack.run_once" => false,
        "rack.url_scheme" => "http",
        "rack.hijack?" => true,
        "SCRIPT_NAME" => "",
        "SERVER_SOFTWARE" => "butterflies #{VERSION}"
      }
    end

    def report_app_error(error, env)
      where = env ? " handling #{env['REQUEST_METHOD']} #{env['PATH_INFO']}" : ""
      lines = ["butterflies: app error#{where}: #{error.class}: #{error.message}"]
      lines.concat(Array(error.backtrace).map { |line| "\t#{line}" })
      $stderr.write(lines.join("\n") << "\n")
    end

    def monotonic
      Process.clock_gettime(Process::CLOCK_MONOTONIC)
    end
  end
end
