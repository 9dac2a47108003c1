# frozen_string_literal: true

module Butterflies
  # Exit statuses of `butterflies`, and of `rails server`/rackup when
  # Butterflies ends them: a usage or configuration mistake, and anything
  # else that stops a server (an address in use, an app that does not load).
  EXIT_USAGE = 2
  EXIT_FAILURE = 1

  # Everything Butterflies raises on purpose.
  class Error < StandardError; end

  # An address could not be bound (in use, not local, unresolvable).
  # Raised by the Rust engine.
  class BindError < Error; end

  # A command-line flag or option value is wrong.
  class ConfigError < Error; end

  # Raised into the app when it writes to a client that went away (a
  # streamed body, a Rack 3 stream). Not logged as an app error.
  class ClientDisconnected < IOError; end

  # A Rust thread of the engine panicked or failed: the process stopped
  # (gracefully) and exits non-zero.
  class EngineFault < Error; end

  # The rackup file is missing or does not load.
  class AppLoadError < Error; end
end
