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

# Ruby validates every value (Configuration, the DSL); the engine raises on
# one Ruby should never have sent rather than change or ignore it.
RSpec.describe "Engine.new" do
  {
    "an unknown option" => ["{ bogus: 1 }", "unknown engine option bogus"],
    "a queue depth of 0" => ["{ queue_depth: 0 }", "queue_depth must be at least 1, got 0"],
    "an infinite timeout" => ["{ idle_timeout: Float::INFINITY }", "idle_timeout must be a finite number of seconds"]
  }.each do |what, (options, message)|
    it "raises ArgumentError for #{what}" do
      script = <<~RUBY
        require "butterflies"
        begin
          Butterflies::Engine.new([["tcp", "127.0.0.1", 0]], #{options})
          puts "no error"
        rescue ArgumentError => e
          puts "ArgumentError: \#{e.message}"
        end
      RUBY
      out, err, status = Open3.capture3(RbConfig.ruby, "-I#{ServerHelpers::ROOT}/lib", "-e", script)
      expect(status).to be_success, err
      expect(out).to start_with("ArgumentError: #{message}")
    end
  end
end
