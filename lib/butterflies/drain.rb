# frozen_string_literal: true

module Butterflies
  # drain_delay: after TERM the server serves on for that long while
  # /ready says 503 and every response closes its connection (the stats
  # region's flag tells the engine of every process), so a load balancer
  # takes it out of rotation before it stops accepting. Used by the cluster
  # master and by single mode alike.
  class Drain
    attr_reader :until

    # `stats`: gives the stats region (opened after the server is made).
    def initialize(config, stats, log:)
      @delay = config[:drain_delay]
      @stats = stats
      @log = log
      @until = nil
    end

    # Begins draining at `now`; false when there is no delay or it began
    # already (a second TERM: stop at once).
    def begin(now)
      return false if @delay.zero? || @until

      @until = now + @delay
      @stats.call.draining = true
      @log.info "Draining for #{@delay}s (drain_delay): /ready says 503, responses close their connections"
      true
    end

    def over?(now)
      !@until.nil? && now >= @until
    end
  end
end
