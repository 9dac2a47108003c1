# frozen_string_literal: true

require "json"

module Butterflies
  # The files that say a server runs: the pidfile (`pidfile`, `--pidfile`)
  # and the state file (`state_path`, `--state`: pid, control URL and
  # token, for `butterflies ctl -S`). Written at boot by single mode or the
  # cluster master, removed on exit; a hot restart writes them again. The
  # state file holds the token, so it is made with mode 0600.
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

    def write_state
      state = { "pid" => Process.pid, "control_url" => @config[:control_url], "control_token" => @config[:control_token] }
      path = @config[:state_path]
      File.open("#{path}.tmp", File::WRONLY | File::CREAT | File::TRUNC, 0o600) { |f| f.write(JSON.generate(state)) }
      File.rename("#{path}.tmp", path)
    end
  end
end
