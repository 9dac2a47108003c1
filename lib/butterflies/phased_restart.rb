# frozen_string_literal: true

module Butterflies
  # A phased restart in progress (USR1, HUP, or a worker stuck past
  # request_hard_timeout): workers are replaced one at a time, each new one
  # ready before the old one is told to stop, the next started once the old
  # one has exited. The cluster master calls #step every tick; the restart
  # yields what to do and says when it is over.
  class PhasedRestart
    # `workers`: the master's records to replace, in order.
    def initialize(workers = [])
      @waiting = workers.dup
      @replacing = nil # [old, fresh] while one is being replaced
    end

    # Whether `worker` is waiting to be replaced, or being replaced.
    def include?(worker)
      @waiting.include?(worker) || @replacing&.first == worker
    end

    def add(worker)
      @waiting << worker
    end

    # One step, given the workers alive now. Yields (:terminate, old) once
    # its replacement is ready, and (:spawn, old) to start a replacement,
    # which the block returns. Returns false once the restart is over.
    def step(alive, &act)
      return true if replacing?(alive, &act)

      while (old = @waiting.shift)
        next unless alive.include?(old)

        @replacing = [old, act.call(:spawn, old)]
        return true
      end
      false
    end

    private

    def replacing?(alive, &act)
      return false unless @replacing

      old, fresh = @replacing
      act.call(:terminate, old) if fresh.ready && !old.stopping
      return true if alive.include?(old)

      @replacing = nil
      false
    end
  end
end
