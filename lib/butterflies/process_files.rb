# frozen_string_literal: true

require "json"

module Butterflies
  # The files that say a server runs: the pidfile (`pidfile`, `--pidfile`)
  # and the state file (`state_path`, `--state`: pid, control URL and
  # token, for `butterflies ctl -S`). Written at boot by single mode or the
  # cluster master, removed on exit; a hot restart writes them again. The
  # state file holds the token, so it is made afresh with mode 0600
  # (O_EXCL, O_NOFOLLOW: a file or symlink left at its temporary path is
  # removed, never written through), then renamed into place.
  class ProcessFiles
    def initialize(config)
      @config = config
    end

    def write
      File.write(@config[:pidfile], "#{Process.pid}\n") if @config[:pidfile]
      write_state if @config[:state_path]
    end

    def remove
      [@config[:pidfile], @config[:state_path]].compact.each do |path|
        File.unlink(path) if File.exist?(path)
      end
    end

    private

    PRIVATE = File::WRONLY | File::CREAT | File::EXCL | File::NOFOLLOW

    def write_state
      state = { "pid" => Process.pid, "control_url" => @config[:control_url], "control_token" => @config[:control_token] }
      path = @config[:state_path]
      temporary = "#{path}.tmp"
      File.unlink(temporary) if File.symlink?(temporary) || File.exist?(temporary)
      File.open(temporary, PRIVATE, 0o600) do |f|
        f.chmod(0o600) # whatever the umask
        f.write(JSON.generate(state))
      end
      File.rename(temporary, path)
    end
  end
end
