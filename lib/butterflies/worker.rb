# frozen_string_literal: true

module Butterflies
  # A cluster worker, in the forked child: starts its own IO and app threads
  # on the sockets inherited from the master, writes its heartbeat into its
  # slot of the shared stats region, and stops gracefully on TERM/INT/QUIT
  # or when the master dies.
  class Worker
    HEARTBEAT_SECONDS = 1
    # Pushed on the signal queue when a Rust thread panicked or failed.
    FAULT = "an engine thread failed"
    # What stops a worker.
    STOP_SIGNALS = %w[TERM INT QUIT].freeze

    # alive: a pipe whose write end only the master holds (EOF: it died).
    # inquiries: this worker's end of its Inquiry socket.
    # signals: the master's queue, reopened in the child (a forked worker),
    # holding a stop signal that came before the worker trapped its own.
    def initialize(index:, engine:, app:, loader:, config:, alive:, inquiries:, log:, signals: nil)
      @index = index
      @engine = engine
      @app = app
      @loader = loader
      @config = config
      @alive = alive
      @inquiries = inquiries
      @log = log
      @signals = signals
    end

    # Runs the worker until it is told to stop; never returns.
    def run
      signals = boot
      app = @app || @loader.call
      # A preloaded app was fitted in the master; worker 0 says it for all.
      pool_note = DatabasePool.fit!(@config)
      @log.info pool_note.sub("* ", "* worker 0: ") if pool_note && @index.zero?
      runtime = Runtime.new(@engine, app, @config, on_fault: ->(_message) { signals.push(FAULT) }, worker: @index).start
      Stats.beat("ready")
      beater = heartbeat(runtime)
      reason = wait(signals)
      beater.kill
      @log.event "worker #{@index} (pid #{Process.pid}) stopping: #{reason}" if ["master died", FAULT].include?(reason)
      shut_down(runtime)
      finish(reason == FAULT ? 1 : 0)
    rescue Exception => e # rubocop:disable Lint/RescueException
      @log.warn "butterflies: worker #{@index} failed: #{e.class}: #{e.message}"
      finish(1)
    end

    private

    # The process becomes a worker: its name, output, signals, CPU and
    # the app's boot hooks; it answers the master's inquiries from here on
    # (a worker stuck loading the app shows where). Returns the queue its
    # signals go to.
    def boot
      $PROGRAM_NAME = "butterflies worker #{@index}"
      Butterflies.sync_output!
      Inquiry.serve(@inquiries, @engine)
      signals = @signals || SignalQueue.new
      signals.trap(STOP_SIGNALS)
      %w[USR1 USR2 TTIN TTOU HUP CHLD].each { |s| Signal.trap(s, "DEFAULT") }
      Signal.trap(LogFiles::SIGNAL) { LogFiles.new(@config).reopen! }
      pin if @config[:pin_workers]
      @config.hooks[:on_worker_boot].each { |hook| hook.call(@index) }
      signals
    end

    # Beats every HEARTBEAT_SECONDS: it lives, and whether an app thread
    # is stuck past request_hard_timeout (the master then replaces it).
    def heartbeat(runtime)
      Thread.new do
        Thread.current.name = "butterflies-heartbeat"
        loop do
          Stats.beat(runtime.engine.stuck? ? "stuck" : "ready")
          sleep HEARTBEAT_SECONDS
        end
      end
    end

    def shut_down(runtime)
      runtime.stop
      stats = runtime.stats
      refused = ", refused #{stats[:rejected]} (503: queue full or request timeout)" if stats[:rejected].positive?
      @log.event "* worker #{@index} (pid #{Process.pid}) served #{stats[:requests]} requests#{refused}"
      @config.hooks[:on_worker_shutdown].each { |hook| hook.call(@index) }
    end

    def pin
      cpu = Engine.pin_process(@index)
      @log.info "* worker #{@index} (pid #{Process.pid}) pinned to CPU #{cpu}"
    rescue RuntimeError => e
      @log.warn "butterflies: worker #{@index}: #{e.message}; running unpinned"
    end

    # A stop signal, or the master's death (EOF on the alive pipe).
    def wait(signals)
      loop do
        signal = signals.pop(HEARTBEAT_SECONDS, also: [@alive])
        return signal if STOP_SIGNALS.include?(signal) || signal == FAULT
        return "master died" if master_gone?
      end
    end

    def master_gone?
      IO.select([@alive], nil, nil, 0) && @alive.read_nonblock(1, exception: false).nil?
    end

    # exit! skips at_exit handlers inherited from the master (they are the
    # master's to run), so what was logged is written first.
    def finish(status)
      @log.drain
      Butterflies.flush_output
      exit!(status)
    end
  end
end
