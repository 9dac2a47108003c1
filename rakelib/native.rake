# frozen_string_literal: true

# The precompiled platform gem: butterflies-VERSION-x86_64-linux.gem, with
# one engine per Ruby ABI in lib/butterflies/ABI/butterflies.so (as
# rake-compiler lays them out), for this machine's Ruby (Debian bookworm's
# 3.1) and the trixie root's (3.3). Portable code (x86-64 baseline, no
# target-cpu=native), symbols and debug info stripped. docs/RELEASING.md says how a
# release is built.

require "rubygems/package"

NATIVE_DIR = "pkg/native"
NATIVE_PLATFORM = "x86_64-linux"

# Packs pkg/native/ABI/butterflies.so into lib/butterflies/ABI/ of a
# platform gem built from butterflies.gemspec, without the Rust sources
# and extconf.
def build_platform_gem
  abis = Dir.glob("#{NATIVE_DIR}/*/butterflies.so").map { |path| File.basename(File.dirname(path)) }.sort
  raise "no engines in #{NATIVE_DIR}: run rake native" if abis.empty?

  spec = platform_spec(abis)
  out = File.expand_path("pkg/#{spec.full_name}.gem")
  staging = "#{NATIVE_DIR}/staging"
  stage(spec, abis, staging)
  Dir.chdir(staging) { Gem::Package.build(spec, false, false, out) }
  rm_rf staging
  sizes = abis.map { |abi| "#{abi} #{File.size("#{NATIVE_DIR}/#{abi}/butterflies.so") / 1024} KiB" }
  puts "#{out}: #{File.size(out) / 1024} KiB (engines: #{sizes.join(', ')})"
end

# The source gem's spec, made the platform gem's for `abis`. The ABIs
# built, and no other: 3.1 and 3.3 allow 3.2, which the loader then
# refuses in one line (Butterflies::Native).
def platform_spec(abis)
  spec = Gem::Specification.load("butterflies.gemspec")
  spec.platform = Gem::Platform.new(NATIVE_PLATFORM)
  spec.extensions = []
  spec.files -= Dir["Cargo.toml", "Cargo.lock", "build.rs", "src/**/*.rs", "ext/**/*"]
  low, high = abis.minmax
  spec.required_ruby_version = [">= #{low}", "< #{high.succ}.dev"]
  spec
end

# The gem's files, and the engines added to it, laid out in `staging`.
def stage(spec, abis, staging)
  rm_rf staging
  spec.files.each do |file|
    mkdir_p File.dirname("#{staging}/#{file}")
    cp file, "#{staging}/#{file}"
  end
  abis.each do |abi|
    mkdir_p "#{staging}/lib/butterflies/#{abi}"
    cp "#{NATIVE_DIR}/#{abi}/butterflies.so", "#{staging}/lib/butterflies/#{abi}/butterflies.so"
  end
  spec.files += abis.map { |abi| "lib/butterflies/#{abi}/butterflies.so" }
end

# The engine's code is portable unless someone asked for this CPU's
# instructions (RUSTFLAGS, or a cargo config).
def check_portable
  configs = [".cargo/config.toml", ".cargo/config", "~/.cargo/config.toml", "~/.cargo/config"]
            .map { |path| File.expand_path(path) }.select { |path| File.file?(path) }
  flags = [ENV.fetch("RUSTFLAGS", ""), ENV.fetch("CARGO_ENCODED_RUSTFLAGS", ""), *configs.map { |f| File.read(f) }]
  return unless flags.any? { |text| text.include?("target-cpu") }

  raise "rake native: target-cpu is set (RUSTFLAGS or a cargo config): the engine would not be portable"
end

def native_abi
  RUBY_VERSION[/\A\d+\.\d+/]
end

namespace :native do
  desc "Build the engine for this Ruby into #{NATIVE_DIR}/ABI/ (portable, stripped)"
  task host: :compile do
    # The build `rake compile` made (so CI builds it once), stripped.
    check_portable
    mkdir_p "#{NATIVE_DIR}/#{native_abi}"
    sh "strip", "--strip-all", "-o", "#{NATIVE_DIR}/#{native_abi}/butterflies.so", EXT_LIB
  end

  desc "Build the engine for the trixie root's Ruby 3.3 (script/test-modern)"
  task :modern do
    sh "script/test-modern", "--worktree", "rake", "native:host"
  end

  desc "Assemble the platform gem from the engines in #{NATIVE_DIR}"
  task :gem do
    build_platform_gem
  end
end

desc "The platform gem (#{NATIVE_PLATFORM}) with engines for Ruby 3.1 (host) and 3.3 (trixie root)"
task native: %w[native:host native:modern native:gem]
