# frozen_string_literal: true

module Butterflies
  # The serving part of a process: the Rust IO threads of a bound engine and
  # the Ruby app threads that take its requests. Used by single mode and by
  # each cluster worker; nothing here forks.
  class Runtime
    attr_reader :engine

    # on_fault: called (from a thread of its own) with a message when a Rust
    # thread of the engine panicked or failed; the owner must then stop.
    # worker: the cluster worker's index, whose sockets this process takes
    # (nil: single mode, all of them).
    def initialize(engine, app, config, on_fault: nil, worker: nil)
      @engine = engine
      @worker = worker
      @app = app
      @config = config
      @on_fault = on_fault
      @stopping = false
    end

    # Names the shared stats region's memfd across exec.
    STATS_ENV = "BUTTERFLIES_STATS_FD"

    # Seconds an app thread added on demand may sit idle before it leaves.
    EXTRA_THREAD_IDLE_SECONDS = 10.0

    # Starts the IO threads, then the app threads: `threads` of them, and
    # up to `max_threads` while every one is busy with the GVL free.
    def start
      @engine.start(@worker)
      @base = base_env.freeze
      @reporter = method(:report_app_error)
      @lock = Mutex.new
      @threads = Array.new(@config[:threads]) { |i| app_thread(i, idle_exit: 0) }
      @grower = named_thread("butterflies-grower") { grow } if max_threads > @config[:threads]
      @sentinel = named_thread("butterflies-faults") { watch_faults } if @on_fault
      self
    end

    # Stops accepting, lets requests in flight finish (up to the shutdown
    # timeout) and returns whether every app thread finished.
    # keep_listening: a hot restart follows and takes the sockets over.
    def stop(keep_listening: false)
      @stopping = true
      @grower&.kill
      @sentinel&.kill
      @engine.stop(keep_listening)
      timeout = @config[:shutdown_timeout]
      deadline = Butterflies.monotonic + timeout + 1
      threads = @lock.synchronize { @threads.dup }
      threads.each { |t| t.join([deadline - Butterflies.monotonic, 0].max) }
      unfinished = threads.count(&:alive?)
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

    # App threads now running (the pool grows and shrinks).
    def thread_count
      @lock.synchronize { @threads.count(&:alive?) }
    end

    private

    def max_threads
      [@config[:max_threads] || @config[:threads], @config[:threads]].max
    end

    def app_thread(index, idle_exit:)
      Thread.new do
        Thread.current.name = "butterflies-app-#{index}"
        serve(idle_exit)
      end
    end

    # Adds an app thread whenever the engine reports demand (requests
    # waiting, every thread busy, the GVL free), up to max_threads.
    def grow
      until @stopping
        next unless @engine.wait_for_demand(1.0)

        @lock.synchronize do
          @threads.select!(&:alive?)
          @threads << app_thread(@threads.size, idle_exit: EXTRA_THREAD_IDLE_SECONDS) if @threads.size < max_threads
        end
      end
    end

    def named_thread(name, &block)
      Thread.new do
        Thread.current.name = name
        block.call
      end
    end

    # Waits for a Rust thread to panic or fail, and reports it once.
    def watch_faults
      fault = @engine.wait_for_fault(1.0) until fault || @stopping
      @on_fault.call(fault) if fault
    end

    def serve(idle_exit)
      @engine.serve(@app, @base, @reporter, idle_exit)
    rescue Exception => e # rubocop:disable Lint/RescueException
      # Not an app error (SystemExit, a signal exception): that request's
      # connection was closed; this thread goes on serving.
      warn "butterflies: app thread got #{e.class}: #{e.message}"
      retry unless @stopping
    end

    def base_env
      {
        "rack.version" => [1, 6].freeze, # deprecated by Rack 3.1; Puma 6 sends the same
        "rack.errors" => $stderr,
        "rack.multithread" => max_threads > 1,
        "rack.multiprocess" => @config[:workers].positive?,
        "rack.run_once" => false,
        "rack.url_scheme" => "http",
        "rack.hijack?" => true,
        "SCRIPT_NAME" => "",
        "SERVER_SOFTWARE" => "butterflies #{VERSION}"
      }
    end

    # Called by the engine for an app exception. `request`: "GET /path" as
    # the client sent it (middleware may have rewritten the env's), when
    # the engine still knows it. Returns the lowlevel_error_handler's
    # response, if one is configured: the engine sends it instead of a
    # plain 500.
    def report_app_error(error, env, request = nil)
      request ||= "#{env['REQUEST_METHOD']} #{env['REQUEST_URI'].to_s.split('?', 2).first}" if env
      lines = ["butterflies: app error#{" handling #{request}" if request}: #{error.class}: #{error.message}"]
      lines.concat(Array(error.backtrace).map { |line| "\t#{line}" })
      $stderr.write(lines.join("\n") << "\n")
      lowlevel_error_response(error, env)
    end

    # Puma's lowlevel_error_handler: called with the exception, the env and
    # the status (as many as it takes); returns a Rack response.
    def lowlevel_error_response(error, env)
      handler = @config[:lowlevel_error_handler]
      return nil unless handler

      args = [error, env, 500]
      arity = handler.respond_to?(:arity) ? handler.arity : handler.method(:call).arity
      handler.call(*(arity.negative? ? args : args.first(arity)))
    rescue StandardError => e
      warn "butterflies: lowlevel_error_handler failed: #{e.class}: #{e.message}; answering 500"
      nil
    end
  end
end
