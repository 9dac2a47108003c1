# frozen_string_literal: true

module Butterflies
  # The operator's log, for single mode, the cluster master and its workers
  # alike: `info` lines (the boot banner, stop and restart notices) are
  # hidden by `quiet`; `event` lines (a worker started, died, was replaced)
  # always print, because an operator must see them; `warn` lines go to
  # stderr.
  #
  # Writing never blocks the caller and never raises: a supervisor must
  # not stop because the reader of its stdout is slow or gone. Each stream
  # is written by a thread of its own from a bounded buffer; past
  # CAPACITY lines waiting, new lines are dropped and counted (#dropped),
  # and a write error (EPIPE: the reader went away) is counted and the
  # line dropped. Before exit or exec, #drain gives the writers a bounded
  # time to finish.
  class Log
    # Lines waiting for a slow reader, per stream, before new ones drop.
    CAPACITY = 1024
    # How long #drain waits by default for the lines to be written.
    DRAIN_SECONDS = 1

    def initialize(io, quiet: false, err: $stderr)
      @quiet = quiet
      @out = Outlet.for(io)
      @err = Outlet.for(err)
    end

    def info(line)
      @out.push(line) unless @quiet
    end

    def event(line)
      @out.push(line)
    end

    def warn(line)
      @err.push(line)
    end

    # Lines dropped (the buffer was full, or the write failed).
    def dropped
      @out.dropped + (@err.equal?(@out) ? 0 : @err.dropped)
    end

    # Waits up to `seconds` for every line pushed so far to be written.
    def drain(seconds = DRAIN_SECONDS)
      deadline = Butterflies.monotonic + seconds
      [@out, @err].uniq.each { |outlet| outlet.drain(deadline) }
    end

    # One output stream and the thread that writes to it. One per IO per
    # process: the master's Log and the logs made for it share them. A
    # forked child starts afresh (the parent's writer thread is not there).
    class Outlet
      @all = {}
      @lock = Mutex.new

      def self.for(io)
        @lock = Mutex.new if @pid != Process.pid
        @lock.synchronize do
          @all = {} if @pid != Process.pid
          @pid = Process.pid
          @all[io] ||= new(io)
        end
      end

      attr_reader :dropped

      def initialize(io)
        @io = io
        @dropped = 0
        @pid = nil
      end

      def push(line)
        fresh_after_fork
        @lock.synchronize do
          if @pending.size >= CAPACITY
            @dropped += 1
          else
            @pending << line.to_s
            @wake.signal
          end
        end
      end

      # Waits, until the monotonic `deadline`, for the buffer to be empty.
      def drain(deadline)
        return unless @pid == Process.pid

        @lock.synchronize do
          while @pending.any? || @writing
            left = deadline - Butterflies.monotonic
            break if left <= 0

            @idle.wait(@lock, left)
          end
        end
      end

      private

      def fresh_after_fork
        return if @pid == Process.pid

        @pid = Process.pid
        @lock = Mutex.new
        @wake = ConditionVariable.new
        @idle = ConditionVariable.new
        @pending = []
        @writing = false
        @thread = Thread.new { write_forever }
        @thread.name = "butterflies-log"
      end

      def write_forever
        loop do
          text = take
          begin
            @io.write(text)
          rescue IOError, SystemCallError
            @lock.synchronize { @dropped += text.count("\n") }
          end
          @lock.synchronize do
            @writing = false
            @idle.broadcast
          end
        end
      end

      def take
        @lock.synchronize do
          @wake.wait(@lock) while @pending.empty?
          @writing = true
          text = @pending.map { |line| line.end_with?("\n") ? line : "#{line}\n" }.join
          @pending.clear
          text
        end
      end
    end
  end
end
