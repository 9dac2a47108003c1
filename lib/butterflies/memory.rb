# frozen_string_literal: true

module Butterflies
  # A process's private memory: what it alone holds (USS), from
  # /proc/PID/smaps_rollup. RSS would count the pages a preloaded app
  # shares with the master and the other workers, which are not freed when
  # one worker goes.
  module Memory
    MB = 1024 * 1024
    PRIVATE = /^Private_(?:Clean|Dirty|Hugetlb):\s+(\d+) kB/

    module_function

    # Bytes, or nil when the process is gone (or the kernel has no
    # smaps_rollup: Linux before 4.14).
    def private_bytes(pid)
      File.read("/proc/#{pid}/smaps_rollup").scan(PRIVATE).sum { |(kb)| Integer(kb) } * 1024
    rescue SystemCallError
      nil
    end

    def mb(bytes)
      (bytes.to_f / MB).round
    end
  end

  # worker_memory_limit and worker_memory_hard_limit, for a cluster master.
  # Every EVERY seconds it measures each worker (the worker_memory_bytes
  # gauge); a worker past the hard limit is to be killed, and the largest
  # past the soft limit to get a successor (it stops once that one is
  # ready). Soft replacements go one at a time, after a random delay of
  # up to JITTER seconds, so workers that grow alike do not recycle
  # together.
  class MemoryWatch
    EVERY = 1.0
    JITTER = 3.0

    # `stats`: gives the stats region (it is opened after the master is made).
    def initialize(config, stats)
      @soft = config[:worker_memory_limit]
      @hard = config[:worker_memory_hard_limit]
      @stats = stats
      @measured_at = nil
      @due = nil
    end

    # Yields (:kill or :replace, worker, the line to log) for what is due.
    # `quiet`: a restart, drain or stop is under way (no soft replacement).
    def check(workers, now, quiet:)
      return if @measured_at && now - @measured_at < EVERY

      @measured_at = now
      sizes = measure(workers)
      past(sizes, @hard).each { |w, bytes| yield :kill, w, line(w, bytes, "worker_memory_hard_limit", @hard, "killing") }
      forget_failed_successors(workers)
      worker, bytes = replacement(workers, sizes, now) unless quiet
      yield :replace, worker, line(worker, bytes, "worker_memory_limit", @soft, "replacing") if worker
    end

    private

    # Each active worker's private bytes, also into its gauge.
    def measure(workers)
      sizes = workers.select(&:active?).to_h { |w| [w, Memory.private_bytes(w.pid)] }.compact
      sizes.each { |w, bytes| @stats.call.set_memory(w.slot, bytes) }
      sizes
    end

    # The worker to replace now for the soft limit, with its size, if any.
    def replacement(workers, sizes, now)
      return nil if workers.any?(&:succeeded_for) # one at a time

      due(past(sizes, @soft).select { |w, _| w.ready? }, now)
    end

    def past(sizes, limit)
      limit ? sizes.select { |_, bytes| bytes > limit * Memory::MB } : {}
    end

    # The largest of `over`, once the random delay since one first went
    # over has passed.
    def due(over, now)
      return @due = nil if over.empty?

      @due ||= now + (rand * JITTER)
      return if @due > now

      @due = nil
      over.max_by { |_, bytes| bytes }
    end

    # A worker whose successor died before it was ready serves on alone:
    # it may be replaced again later.
    def forget_failed_successors(workers)
      workers.select(&:succeeded_for).each do |w|
        w.succeeded_for = nil if workers.none? { |o| !o.equal?(w) && o.index == w.index && o.active? }
      end
    end

    def line(worker, bytes, name, limit, doing)
      "* worker #{worker.index} (pid #{worker.pid}) uses #{Memory.mb(bytes)} MB, past #{name} #{limit} MB; #{doing} it"
    end
  end
end
