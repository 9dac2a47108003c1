# frozen_string_literal: true

require "butterflies"
require "butterflies/rack_handler"

# `rackup -s butterflies` and `rails server -u butterflies` with Rack 2,
# whose Rack::Handler.get("butterflies") requires this file. With Rack 3
# the handler registry is the rackup gem's: lib/rackup/handler/butterflies.rb.
if defined?(Rack::Handler) && Rack::Handler.respond_to?(:register)
  module Rack
    # Rack 2's handler registry.
    module Handler
      # Butterflies as a Rack 2 handler.
      module Butterflies
        extend ::Butterflies::RackHandler
      end
      register(:butterflies, Butterflies)
    end
  end
end
require "rackup/handler/butterflies" if defined?(Rackup::Handler)
