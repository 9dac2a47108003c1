# frozen_string_literal: true

require "json"
require "open3"

# The user-facing defaults are Ruby's (Configuration::DEFAULTS, printed by
# --dry-run); the engine keeps its own for `cargo test` and for callers
# that pass no options. They must be the same values.
RSpec.describe "the defaults" do
  it "are the same in Ruby's configuration and in the engine" do
    script = <<~RUBY
      require "butterflies"
      require "json"
      engine = Butterflies::Engine.defaults
      ruby = Butterflies::Configuration::DEFAULTS.slice(*engine.keys)
      puts JSON.generate(engine: engine, ruby: ruby)
    RUBY
    out, err, status = Open3.capture3(RbConfig.ruby, "-I#{ServerHelpers::ROOT}/lib", "-e", script)
    expect(status).to be_success, err
    both = JSON.parse(out)
    expect(both["engine"].keys).to include("idle_timeout", "queue_depth", "max_head_bytes", "max_parked_bytes")
    both["engine"].each do |key, value|
      expect(both["ruby"]).to include(key), "Configuration::DEFAULTS has no #{key}"
      expect(both["ruby"][key]).to eq(value), "#{key}: Ruby says #{both['ruby'][key].inspect}, the engine #{value.inspect}"
    end
  end
end
