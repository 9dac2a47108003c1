# frozen_string_literal: true

require "fileutils"
require "open3"
require "rbconfig"

# The packaged gem, not the checkout: build it, install it into a private
# GEM_HOME with no network, and run an app whose Gemfile says
# `gem 'butterflies'` with `bundle exec butterflies`.
RSpec.describe "the butterflies gem", timeout: 600 do
  root = ServerHelpers::ROOT

  it "builds, installs locally and serves an app through bundle exec", stress: false do
    Dir.mktmpdir("butterflies-gem") do |dir|
      gem_home = File.join(dir, "gems")
      env = ServerHelpers::UNBUNDLED.merge(
        "GEM_HOME" => gem_home,
        "GEM_PATH" => ([gem_home] + Gem.path).join(File::PATH_SEPARATOR),
        # Reuse compiled crates between runs; the gem still builds from its
        # own sources.
        "CARGO_TARGET_DIR" => File.join(root, "target", "gem")
      )
      built = system(env, "gem", "build", "butterflies.gemspec", "--output", File.join(dir, "butterflies.gem"),
                     chdir: root, out: File::NULL, err: File::NULL)
      expect(built).to be(true)
      log = File.join(dir, "install.log")
      installed = system(env, "gem", "install", "--local", "--no-document", File.join(dir, "butterflies.gem"),
                         out: log, err: %i[child out])
      expect(installed).to be(true), File.read(log)

      app = File.join(dir, "app")
      FileUtils.mkdir_p(app)
      FileUtils.cp(File.join(root, "examples/hello/config.ru"), app)
      File.write(File.join(app, "Gemfile"), "source \"https://rubygems.org\"\ngem \"butterflies\"\n")
      server = ServerProcess.start(%w[bundle exec butterflies -b tcp://127.0.0.1:0],
                                   env: env.merge("BUNDLE_GEMFILE" => File.join(app, "Gemfile")), chdir: app)
      (@servers ||= []) << server
      expect(Net::HTTP.get(URI(server.url("/")))).to eq("Hello world!")
      loaded = IO.popen(env.merge("BUNDLE_GEMFILE" => File.join(app, "Gemfile")),
                        ["bundle", "exec", "ruby", "-e", 'require "butterflies"; puts $LOADED_FEATURES.grep(/butterflies\.so/)'],
                        chdir: app, &:read)
      expect(loaded).to start_with(gem_home)
      # One release library without debug info: in the extensions dir, and
      # RubyGems' own copy in the gem's lib (install_extension_in_lib); none
      # left in ext/.
      libraries = Dir[File.join(gem_home, "**", "butterflies.so")]
      expect(libraries.map { |l| l.sub(gem_home, "") }).to contain_exactly(
        %r{\A/extensions/.*/butterflies-[\d.]+/butterflies/butterflies\.so\z}, %r{/lib/butterflies/butterflies\.so\z}
      )
      sections = libraries.map { |l| IO.popen(["readelf", "-S", "-W", l], &:read) }
      expect(sections).to all(include(".text"))
      expect(sections.grep(/\.debug_info/)).to be_empty
      server.stop
    end
  end

  it "loads a platform gem's engine for this Ruby, and names the source gem when it has none" do
    Dir.mktmpdir("butterflies-platform") do |dir|
      FileUtils.cp_r(File.join(root, "lib"), dir)
      lib = File.join(dir, "lib")
      FileUtils.rm(File.join(lib, "butterflies/butterflies.so"))
      abi = RUBY_VERSION[/\A\d+\.\d+/]
      # Nothing but the copy on the load path (not Bundler's checkout).
      load_it = [ServerHelpers::UNBUNDLED, "ruby", "-I#{lib}", "-e", 'require "butterflies"; print Butterflies::Engine.name']
      # Engines for other Rubies only, as on a Ruby the gem was not built for.
      FileUtils.mkdir_p(File.join(lib, "butterflies/9.8"))
      FileUtils.cp(File.join(root, "lib/butterflies/butterflies.so"), File.join(lib, "butterflies/9.8"))
      _out, err, status = Open3.capture3(*load_it)
      expect(status).not_to be_success
      expect(err).to include("prebuilt engines for Ruby 9.8, not #{abi}: install the source gem")
      # This Ruby's engine in its ABI's directory, as `rake native` packs it.
      FileUtils.mkdir_p(File.join(lib, "butterflies", abi))
      FileUtils.cp(File.join(root, "lib/butterflies/butterflies.so"), File.join(lib, "butterflies", abi))
      out, err, status = Open3.capture3(*load_it)
      expect(status).to be_success, err
      expect(out).to eq("Butterflies::Engine")
    end
  end
end
