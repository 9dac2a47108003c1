# frozen_string_literal: true

module Butterflies
  # What the top process does around serving, the same in single mode
  # (Server) and as a cluster master (Cluster): output files, signal
  # handlers, the stats region, the control server, the pidfile and state
  # file, the banner, the hot-restart exec, halt and goodbye. Each mode
  # keeps only what differs: how it serves and what its signals do.
  class Lifecycle
    attr_reader :log, :signals, :stats, :control, :argv, :dir

    def initialize(config, log:)
      @config = config
      @log = log
      @signals = SignalQueue.new
      @argv = [$PROGRAM_NAME, *ARGV]
      @dir = Dir.pwd
    end

    # Before anything binds or loads: output goes where it is configured,
    # and `signal_names` are trapped (queued until the loop takes them),
    # so a signal sent while a preloaded app boots is not lost or fatal.
    def prepare(signal_names)
      LogFiles.new(@config).redirect!(inherited: ENV.key?(Listeners::INHERIT_ENV))
      Butterflies.sync_output!
      @signals.trap(signal_names)
    end

    # The shared stats region (inherited across a hot restart, else new),
    # and the control server for `owner`, on its own threads.
    def open(owner)
      @stats = stats_region
      @stats.draining = false # a region adopted from a process that drained
      @control = Control.for(@config, owner, log: @log)&.start
    end

    # Process files written, then the banner: `title` and `lines` first,
    # the configuration and addresses after.
    def announce(title, lines, addresses, tls: [])
      ProcessFiles.new(@config).write
      say title
      lines.each { |line| say line }
      @config.banner_lines.each { |line| say line }
      addresses.each { |address| say "* Listening on #{Binds.to_url(address, tls: tls.include?(address))}" }
      say "* TLS: self-signed development certificate #{DevCert.paths.first}" if @config.dev_cert?
      say "Use Ctrl-C to stop"
    end

    def reopen_logs
      error = LogFiles.new(@config).reopen!
      @log.warn "butterflies: cannot reopen the log files: #{error}" if error
    end

    # A hot restart: the same command line again, keeping `engine`'s
    # sockets, the stats region and the control socket.
    def exec_again(engine)
      @config.hooks[:before_exec].each(&:call)
      @log.drain
      Listeners.exec_keeping(engine, @argv, @dir,
                             takeover: { Runtime::STATS_ENV => @stats, Control::INHERIT_ENV => @control })
    end

    def goodbye(engine)
      Listeners.unlink_unix_sockets(engine)
      ProcessFiles.new(@config).remove
      say "Goodbye"
      @log.drain
    end

    # Stops at once, without running at_exit handlers.
    def halt
      ProcessFiles.new(@config).remove
      say "Halted"
      @log.drain
      exit!(0)
    end

    def say(line)
      @log.info(line)
    end

    private

    # A region of another layout (a hot restart into another version) is
    # not adopted: the counts start again, and the log says so.
    def stats_region
      fd = ENV.delete(Runtime::STATS_ENV)
      return Stats.create unless fd

      Stats.adopt(Integer(fd))
    rescue IOError => e
      @log.warn "butterflies: the previous process's stats are not kept: #{e.message}"
      Stats.create
    end
  end
end
