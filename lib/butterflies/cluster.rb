# frozen_string_literal: true

module Butterflies
  # Cluster mode: the master binds the listening sockets, may load the app
  # (preload_app!), forks the workers and supervises them. It never starts a
  # Rust thread, and its loop never waits on anyone: the control server and
  # its log writers run on threads of their own (Lifecycle), and workers'
  # liveness is read from the heartbeats they write into the shared stats
  # region (WorkerHandle).
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
    include ClusterState

    SIGNALS = %w[TERM INT QUIT USR1 USR2 TTIN TTOU HUP CHLD URG].freeze
    # Set in a worker started by fork + exec: "index,alive fd,workers,io
    # threads,stats fd,stats slot,inquiry fd" (workers and io threads say
    # which inherited sockets are its).
    WORKER_ENV = "BUTTERFLIES_WORKER"
    # How often the loop reads heartbeats when no signal wakes it.
    TICK_SECONDS = 0.25
    # A worker that ignores TERM this long after it was due is killed.
    KILL_GRACE_SECONDS = 5

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
      @life = Lifecycle.new(config, log: @log)
      @signals = @life.signals
      @workers = []
      @phase = 0
      @started_at = Time.now
      @respawns = RespawnThrottle.new
      @asker = Inquiry::Asker.new
      @phased = nil # a PhasedRestart in progress
      # Fork and exec workers (instead of only forking) from the first
      # phased restart of a preloaded app until the next hot restart.
      @exec_workers = false
      @systemd = Systemd.for
      @state = :booting
      @ticked_at = now
      @memory = MemoryWatch.new(config, -> { @stats })
      @drain = Drain.new(config, -> { @stats }, log: @log)
    end

    def run
      @life.prepare(SIGNALS)
      @engine = Listeners.bind(@config, shared: true, workers: @config[:workers])
      @life.open(self)
      @stats = @life.stats
      @app = Systemd.while_loading(&@loader) if @config[:preload_app]
      pool_note = DatabasePool.fit!(@config) # the app, if loaded here (preload, rails s)
      @alive_reader, @alive_writer = IO.pipe
      banner(pool_note)
      supervise
      @life.exec_again(@engine) if @restart
      @life.goodbye(@engine)
    end

    # The worker side of #exec_worker: in the new process, from the CLI.
    def self.run_exec_worker(config, loader:, log:)
      index, alive, workers, io_threads, stats_fd, slot, inquiry =
        ENV.delete(WORKER_ENV).split(",").map { |n| Integer(n) }
      engine = Listeners.bind(config, shared: true, workers: workers, io_threads: io_threads)
      Stats.adopt(stats_fd).attach(slot)
      Worker.new(index: index, engine: engine, app: nil, loader: loader, config: config,
                 alive: IO.for_fd(alive, "r", autoclose: true), inquiries: UNIXSocket.for_fd(inquiry),
                 log: Log.new(log, quiet: config[:quiet])).run
    end

    # --- what the control server asks of the master (from its threads) ----

    # The region and the master's view of its workers.
    def report
      StatsReport.new(@stats, @config, started_at: @started_at, workers: @workers.dup.map(&:to_h), phase: @phase,
                                       log_dropped: @log.dropped)
    end

    # Whether a control action can be done: nil (yes), or why not.
    def can?(_action)
      nil
    end

    # A control action, done as its signal would be (halt: at once).
    def act(name)
      return halt if name == "halt"

      @signals.push(Control::SIGNALS.fetch(name))
    end

    # An Inquiry, answered by the master and by each worker, labelled.
    def inquire(name, seconds)
      @asker.cluster(@workers.dup, name, seconds, @engine)
    end

    private

    def supervise
      loop do
        spawn_missing unless @stopping
        signal = @signals.pop(TICK_SECONDS)
        handle(signal) if signal
        reap
        read_heartbeats
        watch_memory
        step_phased_restart
        retire_duplicates
        @workers.each { |w| w.escalate(now, grace(w)) }
        tick_state
        break if @stopping && @workers.empty?
      end
    end

    # What each signal does (SIGCHLD only wakes the loop, which reaps).
    HANDLERS = {
      "TERM" => -> { drain_or_stop }, "INT" => -> { stop_all(restart: false) },
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

      @log.warn "butterflies: USR2 ignored: a hot restart would run #{$PROGRAM_NAME} again, which rackup and " \
                "rails server refuse (their pidfile); use USR1 for a phased restart, or restart the service"
    end

    # --- workers -----------------------------------------------------------

    def spawn_missing
      active = @workers.select(&:active?)
      (0...@config[:workers]).each do |index|
        next if active.any? { |w| w.index == index }
        next if @respawns.throttled?(index, now)

        spawn_worker(index)
      end
    end

    # A new worker for `index`, or nil while no stats slot is free (workers
    # still stopping hold theirs; it is tried again on the next tick).
    def spawn_worker(index)
      slot = @stats.allocate(index)
      return no_slot(index) unless slot

      @slot_wanted = false
      @engine.add_worker while @engine.workers <= index
      @config.hooks[:before_fork].each(&:call)
      asking, answering = UNIXSocket.pair
      pid = fork do
        [asking, *@workers.map(&:channel)].each(&:close)
        become_worker(index, slot, answering)
      end
      answering.close
      WorkerHandle.new(index: index, pid: pid, slot: slot, phase: @phase, channel: asking).tap { |w| @workers << w }
    end

    def no_slot(index)
      @log.warn "butterflies: worker #{index} waits for a stats slot (workers still stopping hold them)" unless @slot_wanted
      @slot_wanted = true
      nil
    end

    # In the forked child, holding only its own ends of the master's pipes.
    def become_worker(index, slot, inquiries)
      @alive_writer.close
      signals = @signals.reopen_in_child(Worker::STOP_SIGNALS)
      @life.control&.close
      exec_worker(index, inquiries, slot) if @exec_workers
      @stats.attach(slot)
      Worker.new(index: index, engine: @engine, app: @app, loader: @loader, config: @config,
                 alive: @alive_reader, inquiries: inquiries, log: @log, signals: signals).run
    end

    # In the forked child: become a fresh process running this same command
    # line as worker `index`, loading the app anew (see #phased_restart).
    def exec_worker(index, inquiries, slot)
      [@alive_reader, inquiries].each { |io| io.close_on_exec = false }
      stats_fd = @stats.fd_for_exec
      ENV[WORKER_ENV] = [index, @alive_reader.fileno, @engine.workers, @engine.io_threads,
                         stats_fd, slot, inquiries.fileno].join(",")
      ticket_env, ticket_fds = Listeners.ticket_handoff(@engine)
      ENV.update(ticket_env)
      Listeners.exec_keeping(@engine, @life.argv, @life.dir, keep: [stats_fd] + ticket_fds)
    end

    # Each worker's heartbeat, read from its slot after the loop woke.
    def read_heartbeats
      timeout = @config[:worker_timeout]
      @workers.each do |worker|
        next if worker.stopping?

        age, health = @stats.last_beat(worker.slot)
        noticed(worker, worker.observe(health))
        next unless age > timeout

        event "* worker #{worker.index} (pid #{worker.pid}) sent no heartbeat for #{age.round(1)}s " \
              "(worker_timeout #{timeout}s); replacing it"
        @stats.count_restart("timeout")
        worker.stop(:timeout, now)
      end
    end

    def noticed(worker, change)
      case change
      when :ready then event "* worker #{worker.index} (pid #{worker.pid}) ready"
      when :stuck
        event "* worker #{worker.index} (pid #{worker.pid}) has an app thread stuck past " \
              "#{@config[:request_hard_timeout]}s; replacing it"
        @phased ||= PhasedRestart.new(@phase)
      end
    end

    def reap
      loop do
        pid, status = Process.wait2(-1, Process::WNOHANG)
        break unless pid

        worker = @workers.find { |w| w.pid == pid } or next
        gone(worker, status)
      end
    rescue Errno::ECHILD
      nil
    end

    def gone(worker, status)
      @workers.delete(worker)
      worker.channel.close
      @stats.retire(worker.slot)
      @respawns.failed(worker.index, now) unless worker.ready?
      @stats.count_restart("crash") if worker.crashed?
      line = worker.exit_line(status)
      event line if line
    end

    # --- memory (worker_memory_limit, lib/butterflies/memory.rb) ------------

    def watch_memory
      @memory.check(@workers, now, quiet: @stopping || @phased || @drain.until) do |action, worker, line|
        event line
        @stats.count_restart("memory")
        if action == :kill
          worker.kill(:memory_hard, now)
        else
          worker.succeeded_for = :memory
          spawn_worker(worker.index)
        end
      end
    end

    # TERM is followed by KILL after this long: the shutdown timeout and a
    # margin, except for a worker that stopped beating (it is stuck).
    def grace(worker)
      worker.reason == :timeout ? KILL_GRACE_SECONDS : @config[:shutdown_timeout] + KILL_GRACE_SECONDS
    end

    # More than one active worker for an index, the newest ready, and no
    # phased restart busy with it: the older ones stop.
    def retire_duplicates
      @workers.select(&:active?).group_by(&:index).each_value do |same|
        next unless surplus?(same)

        same[0...-1].each { |w| w.stop(w.succeeded_for || :duplicate, now) }
      end
    end

    def surplus?(same)
      same.size > 1 && same.last.ready? && same.none? { |w| @phased&.include?(w) }
    end

    # --- signals -----------------------------------------------------------

    def stop_all(restart:)
      return if @stopping

      @stopping = true
      @restart = restart
      @phased = nil
      say(restart ? "Hot restart: stopping workers, then re-executing" : "Stopping #{@workers.size} workers")
      @workers.each do |w|
        @stats.count_restart("hot") if w.stop(restart ? :hot : :shutdown, now) && restart
      end
    end

    def resize(delta)
      count = (@config[:workers] + delta).clamp(1, Stats::MAX_WORKERS)
      if count == @config[:workers]
        @log.warn "butterflies: TTIN ignored: #{count} workers is the most a cluster runs" if delta.positive?
        return
      end

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
      @workers.select { |w| w.index >= count && w.active? }.each { |w| w.stop(:resize, now) }
    end

    # With preload_app!, the master holds the code it loaded at boot, so
    # forking would bring the old code back: from the first phased restart
    # on, workers are forked and then exec'd, loading the app themselves
    # (no copy-on-write sharing until the next hot restart). A phased
    # restart asked for during one raises its target phase: the workers it
    # already replaced are replaced again, and none is added.
    def phased_restart
      @exec_workers = true if @config[:preload_app] && !@embedded
      @phase += 1
      if @phased
        @phased.retarget(@phase)
        say "Phased restart: already under way; it now replaces every worker older than phase #{@phase}"
      else
        say "Phased restart: replacing #{@workers.count(&:active?)} workers one at a time"
        @phased = PhasedRestart.new(@phase)
      end
    end

    def step_phased_restart
      return unless @phased && !@stopping

      result = @phased.step(@workers) do |action, old|
        next old.stop(:phased, now) if action == :retire

        spawn_worker(old.index)&.tap { @stats.count_restart("phased") }
      end
      event "* phased restart stopped: a new worker died before it was ready; the others keep serving" if result == :failed
      @phased = nil unless result == :going
    end

    def reload
      # Workers forked from here after this read the certificates anew;
      # exec'd ones read the files themselves.
      @engine.reload_tls.each { |e| @log.warn "butterflies: HUP: certificate not reloaded: #{e}" }
      unless @config_path || File.file?(Configuration::DEFAULT_PATH)
        say "HUP: no config file to reload; doing a phased restart"
        return phased_restart
      end

      fresh = Configuration.load(@cli, path: @config_path)
      @log.warn "butterflies: HUP: binds changed; they apply after a hot restart (USR2)" if fresh.binds != @config.binds
      @config = fresh
      @memory = MemoryWatch.new(@config, -> { @stats })
      say "Reloaded #{@config_path || Configuration::DEFAULT_PATH}"
      stop_extra_workers
      phased_restart
    rescue ConfigError => e
      @log.warn "butterflies: HUP: config not reloaded: #{e.message}"
    end

    # --- lifecycle ---------------------------------------------------------

    def banner(pool_note)
      extra = ", app preloaded" if @config[:preload_app]
      @life.announce("Butterflies #{VERSION} (ruby #{RUBY_VERSION}), cluster master pid #{Process.pid}",
                     ["* workers: #{@config[:workers]}, each with #{@config.thread_range} app and " \
                      "#{@engine.io_threads} #{@config[:inline_io] ? 'inline io loops' : 'io threads'}#{extra}",
                      pool_note].compact,
                     @engine.addresses, tls: @engine.tls_addresses)
    end

    def say(line)
      @log.info(line)
    end

    def event(line)
      @log.event(line)
    end

    # The master's log files, then every worker's (they share the files).
    def reopen_logs
      @life.reopen_logs
      @workers.each { |w| w.signal(LogFiles::SIGNAL) }
    end

    # Stops at once: workers are killed, requests in flight are lost.
    def halt
      @workers.dup.each { |w| w.signal("KILL") }
      @life.halt
    end

    def now
      Butterflies.monotonic
    end
  end
end
