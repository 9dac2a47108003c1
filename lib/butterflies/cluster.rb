# frozen_string_literal: true

module Butterflies
  # Cluster mode: the master binds the listening sockets, may load the app
  # (preload_app!), forks the workers and supervises them. It never starts a
  # Rust thread: it only forks, reaps and signals.
  #
  # Signals (handled one at a time by the master loop):
  #   TERM, INT, QUIT  graceful stop of every worker, then exit 0
  #   USR2             hot restart: workers finish, the master re-execs
  #                    itself keeping the sockets (connections wait in the
  #                    backlog, none is refused)
  #   USR1             phased restart: one worker at a time, each new one
  #                    ready before the old one stops
  #   TTIN / TTOU      one worker more / fewer
  #   HUP              reload the config file, then a phased restart
  class Cluster
    SIGNALS = %w[TERM INT QUIT USR1 USR2 TTIN TTOU HUP CHLD URG].freeze
    # Set in a worker started by fork + exec: "index,heartbeat fd,alive fd,
    # workers,io threads,stats fd,stats slot,inquiry fd" (workers and io
    # threads say which inherited sockets are its).
    WORKER_ENV = "BUTTERFLIES_WORKER"
    TICK_SECONDS = 0.5
    # A worker that ignores TERM this long after it was due is killed.
    KILL_GRACE_SECONDS = 5

    # One forked worker, as the master sees it.
    # slot: its place in the shared stats region; phase: the phased restart
    # it was started in; channel: the master's end of its Inquiry socket.
    Record = Struct.new(:index, :pid, :pipe, :last_beat, :ready, :stopping, :term_at, :slot, :phase, :channel,
                        keyword_init: true)

    # When each worker index last died before it was ready: such a worker
    # is not respawned more than once a second (an app that does not load
    # must not fork-bomb).
    class RespawnThrottle
      def initialize
        @failed_at = {}
      end

      def failed(index, now)
        @failed_at[index] = now
      end

      def throttled?(index, now)
        last = @failed_at[index]
        !last.nil? && now - last < 1
      end
    end

    # embedded: run by the Rack handler (rackup, rails server), which loaded
    # the app already: workers are forked, never exec'd, and USR2 (which
    # would re-run that command line) is refused.
    def initialize(config, loader:, cli: {}, config_path: nil, log: $stdout, embedded: false)
      @embedded = embedded
      config.check_mode!
      @config = config
      @loader = loader
      @cli = cli
      @config_path = config_path
      @log = Log.new(log, quiet: config[:quiet])
      @signals = SignalQueue.new
      @workers = []
      @phase = 0
      @started_at = Time.now
      @respawns = RespawnThrottle.new
      @asker = Inquiry::Asker.new
      @phased = nil # a PhasedRestart in progress
      # Fork and exec workers (instead of only forking) from the first
      # phased restart of a preloaded app until the next hot restart.
      @exec_workers = false
      @argv = [$PROGRAM_NAME, *ARGV]
      @dir = Dir.pwd
    end

    def run
      LogFiles.new(@config).redirect!(inherited: ENV.key?(Listeners::INHERIT_ENV))
      Butterflies.sync_output!
      @engine = Listeners.bind(@config, shared: true, workers: @config[:workers])
      @stats = Runtime.stats_region
      @control = Control.for(@config, self)
      @app = @loader.call if @config[:preload_app]
      @alive_reader, @alive_writer = IO.pipe
      @signals.trap(SIGNALS)
      write_pidfile
      banner
      supervise
      finish
    end

    # The worker side of #exec_worker: in the new process, from the CLI.
    def self.run_exec_worker(config, loader:, log:)
      index, heartbeat, alive, workers, io_threads, stats_fd, slot, inquiry =
        ENV.delete(WORKER_ENV).split(",").map { |n| Integer(n) }
      engine = Listeners.bind(config, shared: true, workers: workers, io_threads: io_threads)
      Stats.adopt(stats_fd).attach(slot)
      pipes = { heartbeat: IO.for_fd(heartbeat, "w", autoclose: true), alive: IO.for_fd(alive, "r", autoclose: true),
                inquiries: UNIXSocket.for_fd(inquiry) }
      Worker.new(index: index, engine: engine, app: nil, loader: loader, config: config, **pipes,
                 log: Log.new(log, quiet: config[:quiet])).run
    end

    # --- what the control server asks of the master -----------------------

    # The region and the master's view of its workers.
    def report
      workers = @workers.map do |w|
        { index: w.index, pid: w.pid, phase: w.phase, booted: w.ready, slot: w.slot }
      end
      StatsReport.new(@stats, @config, started_at: @started_at, workers: workers, phase: @phase)
    end

    # A control action: `name?` asks whether it can be done (nil: yes);
    # `name` does it, as its signal would.
    def act(name)
      return nil if name.end_with?("?")
      return halt if name == "halt"

      @signals.push(Control::SIGNALS.fetch(name))
    end

    # An Inquiry, answered by the master and by each worker, labelled.
    def inquire(name, seconds)
      @asker.cluster(@workers, name, seconds)
    end

    private

    def supervise
      loop do
        spawn_missing unless @stopping
        signal = @signals.pop(TICK_SECONDS, also: watched_ios)
        read_heartbeats
        handle(signal) if signal
        @control&.serve_ready
        reap
        enforce_heartbeat_timeouts
        step_phased_restart
        break if @stopping && @workers.empty?
      end
    end

    # What the master's loop wakes for besides signals: worker pipes and
    # the control server.
    def watched_ios
      ios = @workers.map(&:pipe)
      ios << @control.io if @control
      ios
    end

    # What each signal does (SIGCHLD only wakes the loop, which reaps).
    HANDLERS = {
      "TERM" => -> { stop_all(restart: false) }, "INT" => -> { stop_all(restart: false) },
      "QUIT" => -> { stop_all(restart: false) }, "USR2" => -> { hot_restart }, "USR1" => -> { phased_restart },
      "TTIN" => -> { resize(+1) }, "TTOU" => -> { resize(-1) }, "HUP" => -> { reload },
      LogFiles::SIGNAL => -> { reopen_logs }
    }.freeze

    def handle(signal)
      handler = HANDLERS[signal]
      instance_exec(&handler) if handler
    end

    def hot_restart
      return stop_all(restart: true) unless @embedded

      warn "butterflies: USR2 ignored: a hot restart would run #{$PROGRAM_NAME} again, which rackup and " \
           "rails server refuse (their pidfile); use USR1 for a phased restart, or restart the service"
    end

    # --- workers -----------------------------------------------------------

    def spawn_missing
      active = @workers.reject(&:stopping)
      (0...@config[:workers]).each do |index|
        next if active.any? { |w| w.index == index }
        next if @respawns.throttled?(index, Butterflies.monotonic)

        spawn_worker(index)
      end
    end

    def spawn_worker(index)
      @engine.add_worker while @engine.workers <= index
      slot = @stats.allocate(index)
      @config.hooks[:before_fork].each(&:call)
      reader, writer = IO.pipe
      asking, answering = UNIXSocket.pair
      pid = fork do
        [reader, asking, *@workers.flat_map { |w| [w.pipe, w.channel] }].each(&:close)
        become_worker(index, slot, writer, answering)
      end
      [writer, answering].each(&:close)
      record = Record.new(index: index, pid: pid, pipe: reader, last_beat: Butterflies.monotonic, ready: false,
                          stopping: false, slot: slot, phase: @phase, channel: asking)
      @workers << record
      record
    end

    # In the forked child, holding only its own ends of the master's pipes.
    def become_worker(index, slot, heartbeat, inquiries)
      @alive_writer.close
      @signals.close
      @control&.close
      exec_worker(index, heartbeat, inquiries, slot) if @exec_workers
      @stats.attach(slot)
      Worker.new(index: index, engine: @engine, app: @app, loader: @loader, config: @config,
                 heartbeat: heartbeat, alive: @alive_reader, inquiries: inquiries, log: @log).run
    end

    # In the forked child: become a fresh process running this same command
    # line as worker `index`, loading the app anew (see #phased_restart).
    def exec_worker(index, heartbeat, inquiries, slot)
      [heartbeat, @alive_reader, inquiries].each { |io| io.close_on_exec = false }
      stats_fd = @stats.fd_for_exec
      ENV[WORKER_ENV] = [index, heartbeat.fileno, @alive_reader.fileno, @engine.workers, @engine.io_threads,
                         stats_fd, slot, inquiries.fileno].join(",")
      Listeners.exec_keeping(@engine, @argv, @dir, keep: [stats_fd])
    end

    def read_heartbeats
      @workers.each do |worker|
        data = worker.pipe.read_nonblock(4096, exception: false)
        next unless data.is_a?(String)

        worker.last_beat = Butterflies.monotonic
        @stats.checkin(worker.slot)
        replace_stuck(worker) if data.include?(Worker::STUCK)
        next if worker.ready || !data.include?(Worker::READY)

        worker.ready = true
        event "* worker #{worker.index} (pid #{worker.pid}) ready"
      end
    end

    # An app thread in this worker is past request_hard_timeout: replace the
    # worker the phased way (its other connections finish first).
    def replace_stuck(worker)
      return if worker.stopping || @phased&.include?(worker)

      event "* worker #{worker.index} (pid #{worker.pid}) has an app thread stuck past " \
          "#{@config[:request_hard_timeout]}s; replacing it"
      (@phased ||= PhasedRestart.new).add(worker)
    end

    def reap
      loop do
        pid, status = Process.wait2(-1, Process::WNOHANG)
        break unless pid

        worker = @workers.find { |w| w.pid == pid } or next
        @workers.delete(worker)
        worker.pipe.close
        worker.channel.close
        @stats.retire(worker.slot)
        @respawns.failed(worker.index, Butterflies.monotonic) unless worker.ready
        next if worker.stopping

        @stats.count_restart("crash")
        event "* worker #{worker.index} (pid #{pid}) died: #{describe(status)}; respawning"
      end
    rescue Errno::ECHILD
      nil
    end

    def describe(status)
      status.signaled? ? "killed by SIG#{Signal.signame(status.termsig)}" : "exit status #{status.exitstatus}"
    end

    def enforce_heartbeat_timeouts
      timeout = @config[:worker_timeout]
      @workers.each do |worker|
        if worker.term_at
          kill(worker, "KILL") if Butterflies.monotonic > worker.term_at + grace
        elsif Butterflies.monotonic - worker.last_beat > timeout
          event "* worker #{worker.index} (pid #{worker.pid}) sent no heartbeat for #{timeout}s; replacing it"
          @stats.count_restart("timeout")
          terminate(worker)
          worker.stopping = false # it is replaced like a dead one
        end
      end
    end

    # TERM now, KILL if it is still there after the grace time.
    def terminate(worker)
      worker.stopping = true
      worker.term_at ||= Butterflies.monotonic
      kill(worker, "TERM")
    end

    def grace
      @stopping ? @config[:shutdown_timeout] + KILL_GRACE_SECONDS : KILL_GRACE_SECONDS
    end

    def kill(worker, signal)
      Process.kill(signal, worker.pid)
    rescue Errno::ESRCH
      nil
    end

    # --- signals -----------------------------------------------------------

    def stop_all(restart:)
      return if @stopping

      @stopping = true
      @restart = restart
      @workers.each { @stats.count_restart("hot") } if restart
      say(restart ? "Hot restart: stopping workers, then re-executing" : "Stopping #{@workers.size} workers")
      @workers.each { |w| terminate(w) }
    end

    def resize(delta)
      count = [@config[:workers] + delta, 1].max
      return if count == @config[:workers]

      @config[:workers] = count
      say "* workers: #{count}"
      stop_extra_workers
    end

    # Workers at or past the configured count stop (spawn_missing starts
    # those below it). The master lets go of the leaving workers' sockets
    # first: each worker accepts what is queued on its own before it
    # closes them.
    def stop_extra_workers
      count = @config[:workers]
      @engine.remove_worker while @engine.workers > count
      @workers.select { |w| w.index >= count && !w.stopping }.each { |w| terminate(w) }
    end

    # With preload_app!, the master holds the code it loaded at boot, so
    # forking would bring the old code back: from the first phased restart
    # on, workers are forked and then exec'd, loading the app themselves
    # (no copy-on-write sharing until the next hot restart).
    def phased_restart
      @exec_workers = true if @config[:preload_app] && !@embedded
      @phase += 1
      say "Phased restart: replacing #{@workers.count { |w| !w.stopping }} workers one at a time"
      @phased = PhasedRestart.new(@workers.reject(&:stopping).sort_by(&:index))
    end

    def step_phased_restart
      return unless @phased

      going = @phased.step(@workers) do |action, worker|
        next terminate(worker) unless action == :spawn

        @stats.count_restart("phased")
        spawn_worker(worker.index)
      end
      @phased = nil unless going
    end

    def reload
      unless @config_path || File.file?(Configuration::DEFAULT_PATH)
        say "HUP: no config file to reload; doing a phased restart"
        return phased_restart
      end

      fresh = Configuration.load(@cli, path: @config_path)
      warn "butterflies: HUP: binds changed; they apply after a hot restart (USR2)" if fresh.binds != @config.binds
      @config = fresh
      say "Reloaded #{@config_path || Configuration::DEFAULT_PATH}"
      stop_extra_workers
      phased_restart
    rescue ConfigError => e
      warn "butterflies: HUP: config not reloaded: #{e.message}"
    end

    # --- lifecycle ---------------------------------------------------------

    def finish
      if @restart
        @config.hooks[:before_exec].each(&:call)
        Listeners.exec_keeping(@engine, @argv, @dir,
                               takeover: { Runtime::STATS_ENV => @stats, Control::INHERIT_ENV => @control })
      end
      remove_pidfile
      Listeners.unlink_unix_sockets(@config)
      say "Goodbye"
    end

    def write_pidfile
      ProcessFiles.new(@config).write
    end

    def remove_pidfile
      ProcessFiles.new(@config).remove
    end

    def banner
      io = @engine.io_threads
      say "Butterflies #{VERSION} (ruby #{RUBY_VERSION}), cluster master pid #{Process.pid}"
      say "* workers: #{@config[:workers]}, each with #{@config[:threads]} app and #{io} io threads" \
          "#{', app preloaded' if @config[:preload_app]}"
      @config.banner_lines.each { |line| say line }
      @engine.addresses.each { |address| say "* Listening on #{Binds.to_url(address)}" }
      say "Use Ctrl-C to stop"
    end

    def say(line)
      @log.info(line)
    end

    # The master's log files, then every worker's (they share the files).
    def reopen_logs
      LogFiles.new(@config).reopen!
      @workers.each { |w| kill(w, LogFiles::SIGNAL) }
    end

    # Stops at once: workers are killed, requests in flight are lost.
    def halt
      @workers.each { |w| kill(w, "KILL") }
      say "Halted"
      remove_pidfile
      Butterflies.flush_output
      exit!(0)
    end

    def event(line)
      @log.event(line)
    end
  end
end
