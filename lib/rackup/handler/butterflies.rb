# frozen_string_literal: true

require "rackup/handler"
require "butterflies"
require "butterflies/rack_handler"

# `rackup -s butterflies` and `rails server -u butterflies` with rackup 2
# (Rack 3): Rackup::Handler.get("butterflies") requires this file.
module Rackup
  # rackup's handler registry.
  module Handler
    # Butterflies as a rackup handler.
    module Butterflies
      extend ::Butterflies::RackHandler
    end
    register(:butterflies, Butterflies)
  end
end
