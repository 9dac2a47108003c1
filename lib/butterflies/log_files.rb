# frozen_string_literal: true

module Butterflies
  # stdout_redirect: the master's (or single mode's) $stdout and $stderr
  # go to files, and every process it forks writes there too (they share
  # the descriptors; the Rust side writes to the same fds 1 and 2). On
  # SIGURG (`butterflies ctl reopen-logs`) each process opens the files
  # again under the same descriptors, so logrotate can move them away:
  # `IO#reopen` swaps the descriptor in one dup2, and a line goes to the
  # old file or the new one, never nowhere.
  class LogFiles
    # Chosen because nothing else sends it to a server (its default is to
    # ignore it): USR1, USR2 and HUP have meanings already.
    SIGNAL = "URG"

    def initialize(config)
      @config = config
    end

    def any?
      !(@config[:redirect_stdout] || @config[:redirect_stderr]).nil?
    end

    # At boot. `append`: false truncates (Puma's default), except after a
    # hot restart, which must not lose what the last process wrote.
    def redirect!(inherited: false)
      mode = @config[:redirect_append] || inherited ? "a" : "w"
      each_file { |io, path| io.reopen(path, mode) }
    end

    # Opens the files again at their paths (after logrotate moved them).
    # Returns nil, or what went wrong.
    def reopen!
      each_file { |io, path| io.reopen(path, "a") }
      nil
    rescue SystemCallError => e
      e.message
    end

    private

    def each_file
      { $stdout => @config[:redirect_stdout], $stderr => @config[:redirect_stderr] }.each do |io, path|
        next unless path

        io.flush
        yield io, path
        io.sync = true
      end
    end
  end
end
