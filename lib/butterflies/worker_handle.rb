# frozen_string_literal: true

module Butterflies
  # One forked worker, as the cluster master sees it: a state, why it is
  # leaving, and the TERM-then-KILL escalation. Liveness comes from the
  # heartbeat the worker writes into its own slot of the shared stats
  # region, read as an age after the master woke, so time the master lost
  # is never counted against a worker.
  #
  #   booting ──ready beat──► ready ──stuck beat──► replacing
  #      │                      │                      │
  #      └──────────── stop(reason) ─► stopping ◄──────┘
  #
  # `replacing`: it still serves until a phased restart has started its
  # successor and that one is ready. A handle leaves the master's list when
  # the process is reaped; #exit_line says what the log makes of it.
  class WorkerHandle
    STATES = %i[booting ready replacing stopping].freeze
    # Why a worker was asked to stop, and what its exit is logged as.
    REASONS = {
      shutdown: "stopped", hot: "stopped for a hot restart", resize: "stopped (fewer workers)",
      phased: "replaced (phased restart)", timeout: "replaced after no heartbeat",
      duplicate: "stopped (a newer worker serves its index)",
      memory: "replaced (worker_memory_limit)", memory_hard: "killed (worker_memory_hard_limit)"
    }.freeze
    # Reasons after which the index is served again at once, by a new worker.
    RESPAWNED = %i[timeout].freeze

    attr_reader :index, :pid, :slot, :phase, :channel, :state, :reason, :stopped_at
    # Why a successor was forked for it (it stops once that one is
    # ready), or nil.
    attr_accessor :succeeded_for

    # `channel`: the master's end of its Inquiry socket.
    def initialize(index:, pid:, slot:, phase:, channel:)
      @index = index
      @pid = pid
      @slot = slot
      @phase = phase
      @channel = channel
      @state = :booting
      @reason = nil
      @stopped_at = nil
      @killed = false
      @succeeded_for = nil
    end

    def ready?
      %i[ready replacing].include?(@state)
    end

    def stopping?
      @state == :stopping
    end

    # Serves its index (or will, once booted): not on its way out.
    def active?
      !stopping?
    end

    def replacing?
      @state == :replacing
    end

    # Whether its index needs a new worker now: it is gone from the count
    # of serving ones for a reason that calls for one at once.
    def respawn_now?
      stopping? && RESPAWNED.include?(@reason)
    end

    # A heartbeat read from its slot: [seconds ago, health]. Returns the
    # transition it caused (:ready, :stuck) or nil.
    def observe(health)
      return nil if stopping?

      if @state == :booting && %i[ready stuck].include?(health)
        @state = :ready
        return :ready
      end
      return nil unless health == :stuck && @state == :ready

      @state = :replacing
      :stuck
    end

    # Marks it for replacement by the next phased restart step.
    def replace!
      @state = :replacing if @state == :ready
    end

    # Asks it to stop (TERM), once; the first reason is the one kept.
    def stop(reason, now)
      return false if stopping?

      @state = :stopping
      @reason = reason
      @stopped_at = now
      signal("TERM")
      true
    end

    # Stops it at once (KILL), for `reason`.
    def kill(reason, now)
      return false if stopping?

      @state = :stopping
      @reason = reason
      @stopped_at = now
      @killed = true
      signal("KILL")
      true
    end

    # KILL it if it is still there `grace` seconds after it was told to stop.
    def escalate(now, grace)
      return unless stopping? && !@killed && now > @stopped_at + grace

      @killed = true
      signal("KILL")
    end

    def signal(name)
      Process.kill(name, @pid)
    rescue Errno::ESRCH
      nil
    end

    # A crash is an exit nobody asked for.
    def crashed?
      !stopping?
    end

    # What the log says of its exit; nil for an exit that was asked for
    # and is told elsewhere (the worker's own "served N requests").
    def exit_line(status)
      return nil if stopping? && !%i[timeout duplicate memory memory_hard].include?(@reason)

      how = status.signaled? ? "killed by SIG#{Signal.signame(status.termsig)}" : "exit status #{status.exitstatus}"
      what = stopping? ? REASONS.fetch(@reason) : "died"
      "* worker #{@index} (pid #{@pid}) #{what}: #{how}#{'; respawning' if crashed? || respawn_now?}"
    end

    def to_h
      { index: @index, pid: @pid, phase: @phase, booted: ready?, slot: @slot, state: @state }
    end
  end
end
