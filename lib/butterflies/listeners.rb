# frozen_string_literal: true

module Butterflies
  # Binds the engine for a configuration, adopting listening sockets that a
  # previous master passed across exec (hot restart, USR2) and those the
  # service manager passed (systemd socket activation: LISTEN_FDS).
  module Listeners
    INHERIT_ENV = "BUTTERFLIES_INHERIT_FDS"
    # The pipe an exec'd worker reads its master's TLS ticket keys from.
    TICKET_ENV = "BUTTERFLIES_TLS_TICKET_FD"
    # Sockets systemd passed, as a hot restart hands them on.
    ACTIVATED_ENV = "BUTTERFLIES_ACTIVATED_FDS"
    # sd_listen_fds(3): passed descriptors start at 3.
    LISTEN_FDS_START = 3

    # Options handed to the Rust engine as they are: its settings.
    ENGINE_OPTIONS = Engine::SETTINGS.keys.freeze

    module_function

    # A bound Engine (no thread started). `shared`: cluster workers will
    # share these sockets; `workers`: how many, each with its own TCP
    # sockets (the kernel spreads connections over them).
    # `io_threads` overrides the configured count (an exec'd worker takes
    # its master's, which laid the sockets out).
    def bind(config, shared: false, workers: nil, io_threads: nil)
      activated = activated_fds
      binds = uris(config, activated).map { |uri| with_dev_cert(config, Binds.parse(uri)).to_engine }
      options = config.to_h.slice(*ENGINE_OPTIONS).compact
      options[:io_threads] = io_threads || loops(config, config[:io_threads] || default_io_threads(workers))
      options[:shared_listeners] = shared
      options[:workers] = workers if workers
      options[:inherit_fds] = inherited_fds
      options[:activated_fds] = activated
      options[:tls_ticket_fd] = inherited_ticket_fd
      Engine.new(binds, options.compact.merge(ruby_side_options(config)))
    end

    # An ssl:// bind without a certificate gets the development one
    # (DevCert); in production that is a mistake, said as one.
    def with_dev_cert(config, bind)
      return bind unless bind.tls&.dev_cert?

      if config[:environment] == "production"
        raise ConfigError, "ssl://#{bind.host}:#{bind.port}: give cert= and key= (a self-signed development " \
                           "certificate is made only outside production)"
      end
      cert, key = DevCert.ensure!
      bind.tls.certs = [[nil, cert, key]]
      bind
    end

    def inherited_ticket_fd
      fd = ENV.delete(TICKET_ENV)
      fd && Integer(fd, exception: false)
    end

    # The environment and descriptor an exec'd worker continues its
    # master's TLS ticket keys from (none without a TLS bind).
    def ticket_handoff(engine)
      return [{}, []] unless engine.tls?

      fd = engine.tls_ticket_fd
      [{ TICKET_ENV => fd.to_s }, [fd]]
    end

    # What the engine takes from the Ruby side's options, when set.
    def ruby_side_options(config)
      { access_log: config[:log_requests] || nil, trust_request_start: (true if config[:trust_request_start]),
        inline_io: (true if config[:inline_io]),
        proxy_from: (config[:proxy_from] unless config[:proxy_from].empty?) }.compact
    end

    # Passed sockets replace the default bind; binds asked for are made
    # too, unless a passed socket serves them.
    def uris(config, activated)
      activated && config[:binds].empty? ? [] : config.binds
    end

    # The sockets systemd passed to this process (LISTEN_PID is ours), or
    # that a previous process of ours had and handed on across exec; nil
    # when none. The variables are taken out of the environment, so the
    # app and its children never see them.
    def activated_fds
      pid = ENV.delete("LISTEN_PID")
      count = ENV.delete("LISTEN_FDS")
      ENV.delete("LISTEN_FDNAMES")
      fds = ENV.delete(ACTIVATED_ENV).to_s.split(",").filter_map { |fd| Integer(fd, exception: false) }
      if pid && Integer(pid, exception: false) == Process.pid
        fds += (LISTEN_FDS_START...(LISTEN_FDS_START + Integer(count.to_s, exception: false).to_i)).to_a
      end
      fds.empty? ? nil : fds
    end

    # One IO thread per CPU in all: in single mode, one per CPU; in a
    # cluster, where each worker's IO threads now get connections of their
    # own, the CPUs shared out over the workers (at least one each).
    # Inline, the IO loops are polled by the app threads: no more loops
    # than threads that are always there, or one would go unpolled.
    def loops(config, io_threads)
      config[:inline_io] ? [io_threads, config[:threads]].min : io_threads
    end

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
      fds = engine.listener_fds(false)
      activated = engine.listener_fds(true)
      takeover.compact.each do |name, io|
        ENV[name] = io.fd_for_exec.to_s
        keep += [io.fd_for_exec]
      end
      # The new process must find this same Butterflies, however this one
      # found it (ruby -I, Bundler, an installed gem).
      lib = File.expand_path("..", __dir__)
      env = { INHERIT_ENV => fds.join(","), ACTIVATED_ENV => activated.join(","),
              "RUBYLIB" => [lib, ENV["RUBYLIB"]].compact.join(File::PATH_SEPARATOR) }
      redirects = (fds + activated + keep).to_h { |fd| [fd, fd] }
      Dir.chdir(dir)
      Butterflies.flush_output
      Kernel.exec(env, RbConfig.ruby, *argv, redirects.merge(close_others: false))
    end

    # Unix socket files this process created (not those systemd passed),
    # removed on a final stop.
    def unlink_unix_sockets(engine)
      engine.own_socket_paths.each do |path|
        File.unlink(path) if File.socket?(path)
      end
    end
  end
end
