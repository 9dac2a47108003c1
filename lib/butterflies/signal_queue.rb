# frozen_string_literal: true

module Butterflies
  # Signals, Unicorn-style: a trap only records the signal and writes a byte
  # to a pipe; the main loop takes signals one at a time, in plain code.
  class SignalQueue
    def initialize
      @queue = []
      @reader, @writer = IO.pipe
    end

    # Traps `signals` (names, e.g. %w[TERM INT]).
    def trap(signals)
      signals.each { |signal| Signal.trap(signal) { push(signal) } }
    end

    # Safe from a trap or another thread.
    def push(signal)
      @queue << signal
      @writer.write_nonblock(".", exception: false)
    rescue IOError
      nil # between #close and a new pipe (#reopen_in_child): it is queued
    end

    # The next signal, waiting up to `timeout` seconds (nil: forever) and for
    # any of `also` to become readable. Returns nil when none came.
    def pop(timeout = nil, also: [])
      return @queue.shift unless @queue.empty?

      IO.select([@reader, *also], nil, nil, timeout)
      @reader.read_nonblock(1024, exception: false)
      @queue.shift
    end

    # The pipe, so a forked child can close its copy.
    def close
      @reader.close
      @writer.close
    end

    # In a forked child: a pipe of its own (the parent's stays the
    # parent's), keeping of what was queued only the signals in `keep`. The
    # traps inherited from the parent push here until the child sets its
    # own, so a TERM sent to a worker the moment it was forked is not lost.
    def reopen_in_child(keep)
      close
      @reader, @writer = IO.pipe
      @queue.select! { |signal| keep.include?(signal) }
      @writer.write_nonblock(".", exception: false) unless @queue.empty?
      self
    end
  end
end
