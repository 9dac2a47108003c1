# frozen_string_literal: true

module Butterflies
  # Binds the engine for a configuration, adopting listening sockets that a
  # previous master passed across exec (hot restart, USR2).
  module Listeners
    INHERIT_ENV = "BUTTERFLIES_INHERIT_FDS"

    # Options handed to the Rust engine as they are: its settings.
    ENGINE_OPTIONS = Engine::SETTINGS.keys.freeze

    module_function

    # A bound Engine (no thread started). `shared`: cluster workers will
    # share these sockets; `workers`: how many, each with its own TCP
    # sockets (the kernel spreads connections over them).
    # `io_threads` overrides the configured count (an exec'd worker takes
    # its master's, which laid the sockets out).
    def bind(config, shared: false, workers: nil, io_threads: nil)
      binds = config.binds.map { |uri| Binds.parse(uri).to_engine }
      options = config.to_h.slice(*ENGINE_OPTIONS).compact
      options[:io_threads] = io_threads || config[:io_threads] || default_io_threads(workers)
      options[:shared_listeners] = shared
      options[:workers] = workers if workers
      options[:access_log] = config[:log_requests] if config[:log_requests]
      options[:trust_request_start] = true if config[:trust_request_start]
      options[:inherit_fds] = inherited_fds
      Engine.new(binds, options)
    end

    # One IO thread per CPU in all: in single mode, one per CPU; in a
    # cluster, where each worker's IO threads now get connections of their
    # own, the CPUs shared out over the workers (at least one each).
    def default_io_threads(workers)
      [Etc.nprocessors / (workers || 1), 1].max
    end

    def inherited_fds
      fds = ENV.delete(INHERIT_ENV).to_s.split(",").map { |fd| Integer(fd, exception: false) }.compact
      fds.empty? ? nil : fds
    end

    # Re-executes this process's command line, keeping `engine`'s sockets
    # and the descriptors in `keep`; a hot restart passes the stats region
    # and the control socket too (`takeover`), named in the environment.
    def exec_keeping(engine, argv, dir, keep: [], takeover: {})
      fds = engine.listener_fds
      takeover.compact.each do |name, io|
        ENV[name] = io.fd_for_exec.to_s
        keep += [io.fd_for_exec]
      end
      # The new process must find this same Butterflies, however this one
      # found it (ruby -I, Bundler, an installed gem).
      lib = File.expand_path("..", __dir__)
      env = { INHERIT_ENV => fds.join(","), "RUBYLIB" => [lib, ENV["RUBYLIB"]].compact.join(File::PATH_SEPARATOR) }
      redirects = (fds + keep).to_h { |fd| [fd, fd] }
      Dir.chdir(dir)
      Butterflies.flush_output
      Kernel.exec(env, RbConfig.ruby, *argv, redirects.merge(close_others: false))
    end

    # Unix socket files this process created, removed on a final stop.
    def unlink_unix_sockets(config)
      config.binds.map { |uri| Binds.parse(uri) }.select(&:unix?).each do |bind|
        File.unlink(bind.path) if File.socket?(bind.path)
      end
    end
  end
end
