# frozen_string_literal: true

module Butterflies
  # One Butterflies process in single mode: binds, starts the Rust IO threads
  # and the Ruby app threads, and waits for a signal.
  #
  # INT, TERM, QUIT: stop gracefully. USR2: hot restart (stop gracefully,
  # then exec the same command line with the listening sockets kept open,
  # so no connection is refused meanwhile). USR1, HUP, TTIN, TTOU act on
  # workers, and there are none: logged and ignored (their default action
  # would kill or stop the process).
  class Server
    DEFAULT_THREADS = Configuration::DEFAULTS[:threads]
    STOP_SIGNALS = %w[INT TERM QUIT].freeze
    IGNORED_SIGNALS = {
      "USR1" => "a phased restart needs cluster mode (-w N); USR2 does a hot restart",
      "HUP" => "reloading the config file needs cluster mode (-w N); USR2 does a hot restart",
      "TTIN" => "no workers to add in single mode",
      "TTOU" => "no workers to remove in single mode"
    }.freeze

    attr_reader :app, :config, :addresses

    # `options`: a Configuration, or a Hash of its keys (binds: [...],
    # threads: 5, ...). `log`: where the banner goes.
    def initialize(app, options = {}, log: nil)
      @app = app
      @config = options.is_a?(Configuration) ? options : from_hash(options)
      @config.check_mode!
      @log = Log.new(log || (options.is_a?(Hash) && options[:log]) || $stdout, quiet: @config[:quiet])
      @signals = SignalQueue.new
      @argv = [$PROGRAM_NAME, *ARGV]
      @dir = Dir.pwd
    end

    # Binds, serves until a stop signal (or #stop), then drains and returns.
    def run
      LogFiles.new(@config).redirect!(inherited: ENV.key?(Listeners::INHERIT_ENV))
      Butterflies.sync_output!
      bind
      @signals.trap(STOP_SIGNALS + %w[USR2] + IGNORED_SIGNALS.keys + [LogFiles::SIGNAL])
      start
      signal = next_signal
      shutdown(restart: signal == "USR2" && !@fault)
      raise EngineFault, "stopped: #{@fault}" if @fault
    end

    # Binds the listening sockets. Raises BindError (port in use, ...).
    def bind
      @engine = Listeners.bind(@config)
      @addresses = @engine.addresses
    end

    # Starts the IO threads and the app threads.
    def start
      @started_at = Time.now
      @stats = Runtime.stats_region
      @slot = @stats.allocate(-1)
      @stats.attach(@slot)
      @control = Control.for(@config, self)
      @runtime = Runtime.new(@engine, @app, @config, on_fault: method(:fault)).start
      ProcessFiles.new(@config).write
      banner
    end

    # Asks the server to stop gracefully; safe from any thread or a trap.
    def stop
      @signals.push("TERM")
    end

    def stats
      @runtime&.stats || {}
    end

    # --- what the control server asks of the server -----------------------

    def report
      StatsReport.new(@stats, @config, started_at: @started_at)
    end

    # A control action: `name?` asks whether single mode can do it (an
    # error message if not); `name` does it, as its signal would.
    def act(name)
      if name.end_with?("?")
        return "#{name.chomp('?')} needs cluster mode (workers >= 1)" if %w[phased-restart? reload?].include?(name)

        return nil
      end
      return halt if name == "halt"

      @signals.push(Control::SIGNALS.fetch(name)) # phased-restart and reload were refused above
    end

    # An Inquiry, answered by this process (at once), in Puma's shape.
    def inquire(name, _seconds)
      Inquiry.answer(name)
    end

    private

    # The next signal that stops or restarts the server; the others are
    # logged and ignored.
    def next_signal
      loop do
        signal = @signals.pop(nil, also: [@control&.io].compact)
        @control&.serve_ready
        next if signal.nil? # a wake-up byte whose signal was already taken, or the control server
        next LogFiles.new(@config).reopen! if signal == LogFiles::SIGNAL
        return signal unless IGNORED_SIGNALS.key?(signal)

        warn "butterflies: #{signal} ignored: #{IGNORED_SIGNALS[signal]}"
      end
    end

    # A Rust thread panicked or failed: stop as on TERM, then fail.
    def fault(message)
      @fault = message
      @signals.push("FAULT")
    end

    def shutdown(restart: false)
      grace = @config[:shutdown_timeout].round(1)
      say(restart ? "Hot restart: finishing requests in flight" : "Stopping (waiting up to #{grace}s for requests in flight)")
      @runtime.stop(keep_listening: restart)
      if restart
        @config.hooks[:before_exec].each(&:call)
        @stats.retire(@slot) # its counts stay, in the region the new process adopts
        Listeners.exec_keeping(@engine, @argv, @dir,
                               takeover: { Runtime::STATS_ENV => @stats, Control::INHERIT_ENV => @control })
      end
      Listeners.unlink_unix_sockets(@config)
      ProcessFiles.new(@config).remove
      say "Goodbye"
    end

    # Stops at once: requests in flight are lost.
    def halt
      ProcessFiles.new(@config).remove
      say "Halted"
      Butterflies.flush_output
      exit!(0)
    end

    def banner
      io = @config[:io_threads] || Etc.nprocessors
      say "Butterflies #{VERSION} (ruby #{RUBY_VERSION}), pid #{Process.pid}"
      say "* threads: #{thread_range} app, #{io} io"
      @config.banner_lines.each { |line| say line }
      @addresses.each { |address| say "* Listening on #{Binds.to_url(address)}" }
      say "Use Ctrl-C to stop"
    end

    # A Hash of Configuration keys (the Rack handler's way): `threads: N`
    # alone means exactly N.
    def from_hash(options)
      options = options.reject { |key, _| key == :log }
      options[:max_threads] ||= options[:threads] if options[:threads]
      Configuration.new.merge!(options)
    end

    def thread_range
      min = @config[:threads]
      max = @config[:max_threads]
      max && max > min ? "#{min}-#{max}" : min.to_s
    end

    def say(line)
      @log.info(line)
    end
  end
end
