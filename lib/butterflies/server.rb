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
      @life = Lifecycle.new(@config, log: @log)
      @signals = @life.signals
      @systemd = Systemd.for
      @state = :booting
      @drain = Drain.new(@config, -> { @stats }, log: @log)
    end

    # What the server does: :booting, :ready, :draining (drain_delay after
    # TERM), :reloading or :stopping (read by /ready).
    attr_reader :state

    # The process answers: nothing else supervises it (a /live probe).
    def live?
      true
    end

    # Binds, serves until a stop signal (or #stop), then drains and returns.
    def run
      @life.prepare(STOP_SIGNALS + %w[USR2] + IGNORED_SIGNALS.keys + [LogFiles::SIGNAL])
      bind
      start
      signal = next_signal
      signal = drain if signal == "TERM" && @drain.begin(Butterflies.monotonic)
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
      @life.open(self)
      @stats = @life.stats
      @slot = @stats.allocate(-1)
      @stats.attach(@slot)
      pool_note = DatabasePool.fit!(@config)
      @runtime = Runtime.new(@engine, @app, @config, on_fault: method(:fault)).start
      banner(pool_note)
      @state = :ready
      @systemd&.state = :ready
    end

    # Asks the server to stop gracefully; safe from any thread or a trap.
    def stop
      @signals.push("TERM")
    end

    def stats
      @runtime&.stats || {}
    end

    # --- what the control server asks of the server (from its threads) ----

    def report
      StatsReport.new(@stats, @config, started_at: @started_at, log_dropped: @log.dropped)
    end

    # Whether a control action can be done: nil (yes), or why not.
    def can?(action)
      "#{action} needs cluster mode (workers >= 1)" if %w[phased-restart reload].include?(action)
    end

    # A control action, done as its signal would be (halt: at once).
    def act(name)
      return @life.halt if name == "halt"

      @signals.push(Control::SIGNALS.fetch(name))
    end

    # An Inquiry, answered by this process (at once), in Puma's shape.
    def inquire(name, _seconds)
      Inquiry.answer(name, @engine)
    end

    private

    # The next signal that stops or restarts the server; the others are
    # logged and ignored.
    def next_signal
      loop do
        signal = @signals.pop(@systemd&.watchdog_seconds&./(4))
        @systemd&.watchdog(!@runtime.engine.stuck?, Butterflies.monotonic)
        next if signal.nil? # no signal yet, or a wake-up byte whose signal was already taken
        next @life.reopen_logs if signal == LogFiles::SIGNAL
        return signal unless IGNORED_SIGNALS.key?(signal)

        ignore_or_reload(signal)
      end
    end

    def ignore_or_reload(signal)
      return reload_certs if signal == "HUP" && @engine.tls?

      @log.warn "butterflies: #{signal} ignored: #{IGNORED_SIGNALS[signal]}"
    end

    # HUP with a TLS bind: the certificates are read again (new handshakes
    # use them); a bad one is logged and the old one kept.
    def reload_certs
      result = Inquiry.answer("reload-certs", @engine)
      result["errors"].each { |e| @log.warn "butterflies: HUP: certificate not reloaded: #{e}" }
      say "HUP: certificates reloaded" if result["errors"].empty?
    end

    # A Rust thread panicked or failed: stop as on TERM, then fail.
    def fault(message)
      @fault = message
      @signals.push("FAULT")
    end

    # Serves on for drain_delay with /ready saying 503 and every response
    # closing its connection; a stop or restart signal ends it early.
    # Returns the signal that ended it ("TERM" when the delay ran out).
    def drain
      @state = :draining
      @systemd&.state = :stopping
      while (left = @drain.until - Butterflies.monotonic).positive?
        signal = @signals.pop(left)
        return signal if signal && !IGNORED_SIGNALS.key?(signal) && signal != LogFiles::SIGNAL
      end
      "TERM"
    end

    def shutdown(restart: false)
      @state = restart ? :reloading : :stopping
      @systemd&.state = restart ? :reloading : :stopping
      grace = @config[:shutdown_timeout].round(1)
      say(restart ? "Hot restart: finishing requests in flight" : "Stopping (waiting up to #{grace}s for requests in flight)")
      @runtime.stop(keep_listening: restart)
      if restart
        @stats.retire(@slot) # its counts stay, in the region the new process adopts
        @life.exec_again(@engine)
      end
      @life.goodbye(@engine)
    end

    def banner(pool_note)
      io = @config[:inline_io] ? "#{@engine.io_threads} inline io loops" : "#{@engine.io_threads} io"
      @life.announce("Butterflies #{VERSION} (ruby #{RUBY_VERSION}), pid #{Process.pid}",
                     ["* threads: #{@config.thread_range} app, #{io}", pool_note].compact, @addresses,
                     tls: @engine.tls_addresses)
    end

    # A Hash of Configuration keys (the Rack handler's way): `threads: N`
    # alone means exactly N.
    def from_hash(options)
      options = options.reject { |key, _| key == :log }
      options[:max_threads] ||= options[:threads] if options[:threads]
      Configuration.new.merge!(options)
    end

    def say(line)
      @log.info(line)
    end
  end
end
