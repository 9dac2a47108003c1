# frozen_string_literal: true

module Butterflies
  # The cluster master's state, as /ready, /live and systemd are told it,
  # and its drain: a part of Cluster (included there), kept apart because
  # it only reads what the master's loop keeps (@workers, @stopping,
  # @restart, @phased, @drain, @ticked_at) and decides nothing else.
  module ClusterState
    # /live fails when the loop has not ticked for this long.
    LIVE_SECONDS = 10

    # What the server does, as of the last tick of the master's loop:
    # :booting (until every index first has a ready worker), :ready,
    # :reloading (a phased or hot restart), :draining (drain_delay after
    # TERM) or :stopping.
    attr_reader :state

    # The master's loop ticked lately (a /live probe).
    def live?
      now - @ticked_at < LIVE_SECONDS
    end

    private

    # Once per tick of the master's loop.
    def tick_state
      end_drain
      @state = current_state
      @ticked_at = now
      tell_systemd if @systemd
    end

    # Ready once every index has a ready worker; after that, ready until a
    # restart, a drain or a stop (a crashed worker is replaced, not a
    # reload).
    def current_state
      return @restart ? :reloading : :stopping if @stopping
      return :draining if @drain.until
      return :reloading if @phased

      booted? ? :ready : :booting
    end

    def booted?
      @state != :booting || (0...@config[:workers]).all? { |i| ready_worker?(i) }
    end

    def ready_worker?(index)
      @workers.any? { |w| w.index == index && w.active? && w.ready? }
    end

    # TERM with drain_delay (lib/butterflies/drain.rb); TERM again stops.
    def drain_or_stop
      stop_all(restart: false) if @stopping || !@drain.begin(now)
    end

    def end_drain
      stop_all(restart: false) if @drain.over?(now) && !@stopping
    end

    # systemd (lib/butterflies/systemd.rb): the state, the status line, and
    # the watchdog, fed while every ready worker's heartbeat is fresh.
    def tell_systemd
      @systemd.tell(@state, now, status: -> { report.status_line(@config[:workers], @phase) }) do |limit|
        @workers.select { |w| w.active? && w.ready? }.all? { |w| @stats.last_beat(w.slot).first < limit }
      end
    end
  end
end
