# frozen_string_literal: true

module Butterflies
  # A phased restart in progress (USR1, HUP, or a worker stuck past
  # request_hard_timeout): workers older than the target phase, and those
  # marked `replacing`, are replaced one at a time, lowest index first. A
  # successor is started; once it is ready its predecessor is told to stop;
  # the next one starts once the predecessor has exited. A USR1 during a
  # restart raises the target (#retarget) instead of starting a second
  # restart beside it, so two never overlap into extra workers. If a
  # successor dies before it is ready, the restart gives up and the old
  # workers keep serving: new code that does not boot takes nothing down.
  class PhasedRestart
    attr_reader :phase

    def initialize(phase)
      @phase = phase
      @current = nil # [old, successor] while one index is being replaced
    end

    def retarget(phase)
      @phase = phase
    end

    # One step, given the master's workers. Yields (:spawn, old), expecting
    # the successor back, and (:retire, old) once the successor is ready.
    # Returns :going, :done, or :failed (a successor died while booting).
    def step(workers, &act)
      state = @current ? replacing(workers, &act) : :next
      return state unless state == :next

      old = next_due(workers) or return :done
      successor = act.call(:spawn, old)
      @current = [old, successor] if successor # nil: no stats slot free yet; tried again next step
      :going
    end

    # Whether `worker` is the one being replaced now.
    def include?(worker)
      @current&.first.equal?(worker)
    end

    private

    def next_due(workers)
      workers.select { |w| w.active? && due?(w) }.min_by(&:index)
    end

    def due?(worker)
      worker.phase < @phase || worker.replacing?
    end

    def replacing(workers, &act)
      old, successor = @current
      return :failed if !workers.include?(successor) && !successor.ready?

      act.call(:retire, old) if successor.ready? && old.active?
      return :going if workers.include?(old)

      @current = nil
      :next
    end
  end
end
