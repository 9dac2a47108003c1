# frozen_string_literal: true

module Butterflies
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
end
