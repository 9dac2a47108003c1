# frozen_string_literal: true

require "json"
require "open3"

# Each option is declared once. The engine's settings (src/net/settings.rs)
# reach Ruby as Engine::SETTINGS with their default, bounds and help; the
# configuration's defaults, the config file's directives and the command
# line's flags are derived from that table, not listed again.
RSpec.describe "the table of options" do
  def run_ruby(script)
    out, err, status = Open3.capture3(RbConfig.ruby, "-I#{ServerHelpers::ROOT}/lib", "-e", script)
    expect(status).to be_success, err
    JSON.parse(out)
  end

  it "gives every engine setting its default, a directive and a flag, each checked against its bounds" do
    seen = run_ruby(<<~RUBY)
      require "butterflies"
      require "butterflies/cli"
      require "json"
      include Butterflies
      app = "#{ServerHelpers::APP}"
      report = Engine::SETTINGS.to_h do |name, s|
        good = s[:kind] == :count ? s[:min] + 3 : 2.5
        low = s[:kind] == :count ? s[:min] - 1 : (s[:zero] ? -1 : 0)
        config = Configuration.new
        dsl = DSL.new(config, "test.rb")
        dsl.public_send(name, good)
        refused = begin
          dsl.public_send(name, low)
          "accepted"
        rescue ConfigError => e
          e.message
        end
        out = StringIO.new
        status = CLI.new(["--\#{name.to_s.tr('_', '-')}", good.to_s, "--dry-run", app], stdout: out, stderr: out).run
        [name, { "default" => Configuration::DEFAULTS[name] == s[:default], "directive" => config[name] == good,
                 "low" => refused, "flag" => status.zero? && out.string.include?("\#{name}: \#{good.inspect}"),
                 "help" => s[:help].to_s }]
      end
      puts JSON.generate(report)
    RUBY
    expect(seen.keys).to include("idle_timeout", "queue_depth", "max_head_bytes", "max_parked_bytes", "max_spilled_bytes")
    seen.each do |name, s|
      expect(s.slice("default", "directive", "flag")).to eq("default" => true, "directive" => true, "flag" => true), name
      expect(s["low"]).to match(/\A#{name} must be a (whole number from \d+|number of seconds)/), "#{name}: #{s['low']}"
      expect(s["help"]).not_to be_empty, name
    end
  end

  it "documents every option in docs/CONFIGURATION.md" do
    names = run_ruby(<<~RUBY)
      require "butterflies"
      require "json"
      puts JSON.generate(Butterflies::Configuration::OPTIONS.keys - %i[binds max_threads lowlevel_error_handler])
    RUBY
    doc = File.read(File.join(ServerHelpers::ROOT, "docs/CONFIGURATION.md"))
    expect(names.reject { |name| doc.include?("`#{name}") }).to eq([])
  end
end

# Ruby validates every value (Configuration, the DSL); the engine raises on
# one Ruby should never have sent rather than change or ignore it.
RSpec.describe "Engine.new" do
  {
    "an unknown option" => ["{ bogus: 1 }", "unknown engine option bogus"],
    "a queue depth of 0" => ["{ queue_depth: 0 }", "queue_depth must be a whole number from 1 to"],
    "an infinite timeout" => ["{ idle_timeout: Float::INFINITY }", "idle_timeout must be a number of seconds above 0"]
  }.each do |what, (options, message)|
    it "raises ArgumentError for #{what}" do
      script = <<~RUBY
        require "butterflies"
        begin
          Butterflies::Engine.new([["tcp", "127.0.0.1", 0, nil, nil]], #{options})
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
