# frozen_string_literal: true

require "socket"

module Butterflies
  # Tells systemd how the server is doing: sd_notify(3), written here (one
  # datagram per message to the socket $NOTIFY_SOCKET names; a leading "@"
  # is the abstract namespace), so no libsystemd is needed and a send never
  # blocks the process that supervises. Without NOTIFY_SOCKET, Systemd.for
  # gives nil and nothing is sent. The top process (a cluster master, or
  # single mode) reports:
  #
  #   READY=1                          every worker booted (single: listening)
  #   RELOADING=1 + MONOTONIC_USEC=... a phased or hot restart began (the
  #                                    clock is required by Type=notify-reload)
  #   READY=1                          it is over
  #   STOPPING=1                       a stop began
  #   STATUS=...                       workers and requests, at most once a second
  #   WATCHDOG=1                       every half WATCHDOG_USEC, and only while
  #                                    the workers' heartbeats are that fresh:
  #                                    all of them stuck, systemd restarts it
  #   EXTEND_TIMEOUT_USEC=...          while the app loads in this process
  #                                    (preload, single mode) and the load
  #                                    makes progress: a boot that hangs is
  #                                    not kept alive past TimeoutStartSec
  class Systemd
    STATES = %i[booting ready reloading stopping].freeze
    MESSAGES = {
      ready: "READY=1", stopping: "STOPPING=1",
      reloading: -> { "RELOADING=1\nMONOTONIC_USEC=#{Process.clock_gettime(Process::CLOCK_MONOTONIC, :microsecond)}" }
    }.freeze
    STATUS_EVERY = 1.0
    # While loading: how often progress is looked at, and how long past
    # each look systemd is asked to wait.
    EXTEND_EVERY = 3.0
    EXTEND_BY = 10.0
    # Objects a load allocates between two looks to count as progress (the
    # looking thread itself allocates a few).
    PROGRESS_OBJECTS = 10_000

    # Runs the block (loading the app), asking systemd for more start time
    # while it makes progress; just runs it without NOTIFY_SOCKET.
    def self.while_loading(&block)
      notifier = self.for
      notifier ? notifier.while_loading(&block) : yield
    end

    # A notifier for this process, or nil when systemd is not listening.
    def self.for(env = ENV)
      path = env.fetch("NOTIFY_SOCKET", "")
      return nil if path.empty?

      new(path, watchdog_seconds(env))
    end

    # Seconds between watchdog pings systemd expects (nil: no watchdog, or
    # it is another process's).
    def self.watchdog_seconds(env)
      usec = Integer(env.fetch("WATCHDOG_USEC", ""), 10, exception: false)
      pid = Integer(env.fetch("WATCHDOG_PID", ""), 10, exception: false)
      return nil if usec.nil? || !usec.positive? || (pid && pid != Process.pid)

      usec / 1e6
    end

    attr_reader :state, :watchdog_seconds

    def initialize(path, watchdog_seconds)
      @address = Socket.sockaddr_un(path.start_with?("@") ? "\0#{path[1..]}" : path)
      @socket = Socket.new(:UNIX, :DGRAM)
      @watchdog_seconds = watchdog_seconds
      @state = :booting
      @status = nil
      @status_at = nil
      @pinged_at = nil
    end

    # Moves to `state` (one of STATES), telling systemd if it changed.
    def state=(state)
      return if state == @state

      @state = state
      message = MESSAGES[state]
      send_message(message.respond_to?(:call) ? message.call : message) if message
    end

    # A STATUS= line from the block (asked at most once every
    # STATUS_EVERY), if it changed.
    def status(now)
      return if @status_at && now - @status_at < STATUS_EVERY

      @status_at = now
      text = yield
      return if text == @status

      @status = text
      send_message("STATUS=#{text}")
    end

    # Pings the watchdog when half its interval passed and `healthy`.
    def watchdog(healthy, now)
      return unless @watchdog_seconds && healthy
      return if @pinged_at && now - @pinged_at < @watchdog_seconds / 2

      @pinged_at = now
      send_message("WATCHDOG=1")
    end

    # Runs the block; meanwhile a thread looks every EXTEND_EVERY seconds
    # and, if the process loaded files or allocated objects since, sends
    # EXTEND_TIMEOUT_USEC. A load stuck in a sleep or on the network makes
    # none, so systemd's own start timeout still ends it.
    def while_loading
      done, finished = IO.pipe # Queue#pop takes no timeout before Ruby 3.2
      extender = Thread.new do
        seen = progress
        until done.wait_readable(EXTEND_EVERY)
          now = progress
          send_message("EXTEND_TIMEOUT_USEC=#{(EXTEND_BY * 1_000_000).to_i}") if progressed?(seen, now)
          seen = now
        end
      end
      yield
    ensure
      finished&.close
      extender&.join
      done&.close
    end

    # A supervising loop's tick: the state (a drain is a stop to systemd),
    # the status line (asked for at most once every STATUS_EVERY, while
    # ready), and the watchdog, fed if the block, given the age a
    # heartbeat may have, says every worker is that fresh.
    def tell(state, now, status:)
      self.state = state == :draining ? :stopping : state
      self.status(now, &status) if @state == :ready
      watchdog(yield(@watchdog_seconds), now) if @watchdog_seconds
    end

    private

    def progress
      [$LOADED_FEATURES.size, GC.stat(:total_allocated_objects)]
    end

    def progressed?(before, after)
      after[0] > before[0] || after[1] - before[1] > PROGRESS_OBJECTS
    end

    # Never waits and never raises: systemd gone is not the server's end.
    def send_message(text)
      @socket.sendmsg_nonblock(text, 0, @address, exception: false)
    rescue SystemCallError, IOError
      nil
    end
  end
end
