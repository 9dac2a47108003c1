# frozen_string_literal: true

module Butterflies
  # Everything Butterflies raises on purpose.
  class Error < StandardError; end

  # An address could not be bound (in use, not local, unresolvable).
  # Raised by the Rust engine.
  class BindError < Error; end

  # A command-line flag or option value is wrong.
  class ConfigError < Error; end

  # The rackup file is missing or does not load.
  class AppLoadError < Error; end
end
