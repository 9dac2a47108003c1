# frozen_string_literal: true

require "rack"

# What differs between the Ruby stacks the suite runs on, in one place:
# Debian bookworm (Ruby 3.1, Rack 2.2, Rails 6.1: script/test) and Debian
# trixie (Ruby 3.3, Rack 3.1, rackup 2.1, Rails 7.2: script/test-modern).
# Loaded by the specs and by the fixture apps.
module Stack
  module_function

  def rack3?
    Gem::Version.new(Rack.release) >= Gem::Version.new("3")
  end

  # A header with several values as this Rack's SPEC wants it: Rack 3 an
  # Array, Rack 2.2 one String with the values on lines (its Lint refuses
  # Arrays, Rack 3.1's refuses newlines).
  def header_values(*values)
    rack3? ? values : values.join("\n")
  end

  # The `rackup` executable: in the rack gem up to 2.2, in the rackup gem
  # since Rack 3.
  def rackup_bin
    Gem.bin_path(rack3? ? "rackup" : "rack", "rackup")
  end
end
