# frozen_string_literal: true

require "open3"

# What installing the gem says before it compiles: ext/butterflies/extconf.rb
# run as RubyGems runs it, in a directory of its own, with a real cargo and
# an old one (a script answering as Debian bookworm's 1.63 does) on PATH.
RSpec.describe "the extension's build setup (extconf.rb)" do
  let(:extconf_rb) { File.join(ServerHelpers::ROOT, "ext/butterflies/extconf.rb") }

  around do |example|
    Dir.mktmpdir do |dir|
      @dir = dir
      @old = File.join(dir, "old-rust")
      FileUtils.mkdir_p(@old)
      File.write(File.join(@old, "cargo"), "#!/bin/sh\necho 'cargo 1.63.0'\n")
      File.chmod(0o755, File.join(@old, "cargo"))
      example.run
    end
  end

  # The directory of a cargo new enough, as script/test's PATH has it.
  def real_cargo_dir
    dirs = ENV.fetch("PATH").split(File::PATH_SEPARATOR) + [File.expand_path("~/.cargo/bin")]
    dirs.find { |dir| File.executable?(File.join(dir, "cargo")) } or raise "no cargo to test with"
  end

  def extconf(env)
    build = File.join(@dir, "build")
    FileUtils.mkdir_p(build)
    out, status = Open3.capture2e({ "CARGO" => nil }.merge(env), RbConfig.ruby, extconf_rb, chdir: build)
    [out, status, File.join(build, "Makefile")]
  end

  it "takes a new enough cargo found after an old one on PATH, and says it is compiling" do
    path = [@old, real_cargo_dir, "/usr/bin", "/bin"].join(File::PATH_SEPARATOR)
    out, status, makefile = extconf("PATH" => path)
    expect(status).to be_success, out
    cargo = File.join(real_cargo_dir, "cargo")
    said = "butterflies: compiling the Rust engine with #{cargo} (VERSION); this may take a few minutes\n"
    expect(out.sub(/\(1\.\d+\.\d+\)/, "(VERSION)")).to eq(said)
    expect(File.read(makefile)).to include("CARGO ?= #{cargo}\n")
  end

  it "names the cargo that is too old in one line when there is no other" do
    out, status, makefile = extconf("PATH" => [@old, "/usr/bin", "/bin"].join(File::PATH_SEPARATOR), "HOME" => @dir)
    expect(status).not_to be_success
    expect(out).to eq("butterflies: building the extension needs Rust 1.85 or newer (cargo); #{@old}/cargo is 1.63.0: " \
                      "install it with rustup (https://rustup.rs), then install the gem again\n")
    expect(File.exist?(makefile)).to be(false)
  end

  it "says in one line what to install when libclang is not there" do
    out, status, makefile = extconf("LIBCLANG_PATH" => @old)
    expect(status).not_to be_success
    expect(out.lines.size).to eq(1), out
    expect(out).to include("needs libclang", "is not in LIBCLANG_PATH=#{@old}", "apt-get install libclang-dev")
    expect(File.exist?(makefile)).to be(false)
  end
end
