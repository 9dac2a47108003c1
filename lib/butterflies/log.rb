# frozen_string_literal: true

module Butterflies
  # The operator's log on stdout, for single mode, the cluster master and
  # its workers alike: `info` lines (the boot banner, stop and restart
  # notices) are hidden by `quiet`; `event` lines (a worker started, died,
  # was replaced) always print, because an operator must see them. Each line
  # is flushed at once, so it reaches a pipe as it happens.
  class Log
    def initialize(io, quiet: false)
      @io = io
      @quiet = quiet
    end

    def info(line)
      write(line) unless @quiet
    end

    def event(line)
      write(line)
    end

    private

    def write(line)
      @io.puts(line)
      @io.flush
    end
  end
end
