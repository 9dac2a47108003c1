# frozen_string_literal: true

require "butterflies"

module Rack
  module Handler
    # `rackup -s butterflies` and `Rack::Handler.get("butterflies")`.
    # Registered for Rack 2's Rack::Handler and, when the rackup gem is
    # loaded, for Rackup::Handler too.
    module Butterflies
      DEFAULT_OPTIONS = { Host: "0.0.0.0", Port: 9292 }.freeze

      class << self
        def run(app, **options)
          options = DEFAULT_OPTIONS.merge(options)
          @server = ::Butterflies::Server.new(app, server_options(options))
          yield @server if block_given?
          @server.run
        end

        # rackup's INT trap calls this when it is still installed.
        def shutdown
          @server&.stop
        end

        def valid_options
          {
            "Host=HOST" => "Hostname to listen on (default: #{DEFAULT_OPTIONS[:Host]})",
            "Port=PORT" => "Port to listen on (default: #{DEFAULT_OPTIONS[:Port]})",
            "Threads=N" => "App threads (default: #{::Butterflies::Server::DEFAULT_THREADS})",
            "IoThreads=N" => "Rust IO threads (default: number of CPUs)",
            "Quiet" => "No boot banner"
          }
        end

        private

        def server_options(options)
          host = options[:Host].to_s
          host = "[#{host}]" if host.include?(":") && !host.start_with?("[")
          {
            binds: ["tcp://#{host}:#{options[:Port]}"],
            threads: options[:Threads] || ::Butterflies::Server::DEFAULT_THREADS,
            io_threads: options[:IoThreads],
            quiet: options[:Quiet] || options[:Silent]
          }.compact
        end
      end
    end

    register(:butterflies, Butterflies) if respond_to?(:register)
  end
end

Rackup::Handler.register(:butterflies, Rack::Handler::Butterflies) if defined?(Rackup::Handler)
