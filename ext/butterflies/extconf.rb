# frozen_string_literal: true

# Writes the Makefile that builds the Rust extension with cargo. The rb_sys
# gem is not needed: the Makefile runs `cargo build --release` and copies the
# library to butterflies.so; `make install` honours sitearchdir and
# target_prefix as RubyGems passes them.

require "English"
require "rbconfig"

crate_root = File.expand_path("../..", __dir__)

# Says `line` where the person installing sees it: RubyGems keeps what
# extconf prints for its log (gem_make.out) and shows it only on failure,
# so the line also goes to the terminal when there is one.
def tell(line)
  puts line
  File.open("/dev/tty", "w") { |tty| tty.puts(line) }
rescue SystemCallError
  nil
end

def give_up(line)
  tell(line)
  abort
end

# The Rust toolchain: the first cargo new enough of $CARGO, each cargo on
# PATH in order, and rustup's ~/.cargo/bin (an old distribution cargo earlier on PATH does
# not hide a good one). Too old or missing is one line that says what to do,
# not make's "cargo: not found".
rust_version = File.read(File.join(crate_root, "Cargo.toml"))[/^rust-version\s*=\s*"([\d.]+)"/, 1] || "1.85"
path_dirs = ENV.fetch("PATH", "").split(File::PATH_SEPARATOR)
on_path = path_dirs.map { |dir| File.join(dir, "cargo") }.select { |path| File.executable?(path) }
candidates = [ENV.fetch("CARGO", nil), *on_path, File.expand_path("~/.cargo/bin/cargo")].compact.uniq
found = candidates.filter_map do |candidate|
  version = IO.popen([candidate, "--version"], err: File::NULL, &:read)[/\d+\.\d+(\.\d+)?/]
  [candidate, version] if version && $CHILD_STATUS.success?
rescue SystemCallError
  nil
end
cargo, cargo_version = found.find { |_, version| Gem::Version.new(version) >= Gem::Version.new(rust_version) }
unless cargo
  seen = found.map { |candidate, version| "#{candidate} is #{version}" }.join(", ")
  give_up "butterflies: building the extension needs Rust #{rust_version} or newer (cargo)" \
          "#{seen.empty? ? ', which was not found' : "; #{seen}"}: install it with rustup (https://rustup.rs), " \
          "then install the gem again"
end

# rb-sys generates Ruby's bindings with bindgen, which needs libclang. Where
# clang-sys would look: LIBCLANG_PATH if set (only there), else
# llvm-config's libdir and the usual library directories.
def libclang_dirs
  return [ENV["LIBCLANG_PATH"]] unless ENV.fetch("LIBCLANG_PATH", "").empty?

  [llvm_libdir, *Dir.glob("/usr/lib/llvm-*/lib"), *Dir.glob("/usr/lib/*-linux-gnu"), "/usr/lib64", "/usr/lib",
   "/usr/local/lib", "/opt/homebrew/opt/llvm/lib", "/usr/local/opt/llvm/lib",
   "/Library/Developer/CommandLineTools/usr/lib", "/Applications/Xcode.app/Contents/Developer/Toolchains/" \
                                                 "XcodeDefault.xctoolchain/usr/lib"].reject(&:empty?)
end

def llvm_libdir
  IO.popen(%w[llvm-config --libdir], err: File::NULL, &:read).strip
rescue SystemCallError
  ""
end

libclang = libclang_dirs.flat_map { |dir| Dir.glob(File.join(dir, "libclang{,-*}.{so,dylib}{,.*}")) }.first
unless libclang
  where = ENV.fetch("LIBCLANG_PATH", "").empty? ? "was not found" : "is not in LIBCLANG_PATH=#{ENV['LIBCLANG_PATH']}"
  give_up "butterflies: building the extension needs libclang (rb-sys generates Ruby's bindings with it), which " \
          "#{where}: apt-get install libclang-dev (Debian, Ubuntu), dnf install clang-devel (Fedora), " \
          "xcode-select --install (macOS), or set LIBCLANG_PATH to the directory that has it"
end

tell "butterflies: compiling the Rust engine with #{cargo} (#{cargo_version}); this may take a few minutes"

target_dir = ENV.fetch("CARGO_TARGET_DIR", File.join(__dir__, "target"))
private_target = ENV["CARGO_TARGET_DIR"].nil?
dlext = RbConfig::CONFIG["DLEXT"]
lib_name = RbConfig::CONFIG["host_os"].match?(/darwin/) ? "libbutterflies.dylib" : "libbutterflies.so"
sitearch = RbConfig::CONFIG["sitearchdir"]

File.write("Makefile", <<~MAKE)
  CARGO ?= #{cargo}
  RUBY = #{RbConfig.ruby}
  CRATE_ROOT = #{crate_root}
  CARGO_TARGET = #{target_dir}
  DLLIB = butterflies.#{dlext}
  sitearchdir = #{sitearch}
  target_prefix = /butterflies
  DESTDIR =

  all: $(DLLIB)

  $(DLLIB):
  \tRUBY=$(RUBY) CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=debuginfo $(CARGO) build --release --features ruby --manifest-path $(CRATE_ROOT)/Cargo.toml --target-dir $(CARGO_TARGET)
  \tcp $(CARGO_TARGET)/release/#{lib_name} $(DLLIB)

  install: $(DLLIB)
  \tmkdir -p $(DESTDIR)$(sitearchdir)$(target_prefix)
  \tmv $(DLLIB) $(DESTDIR)$(sitearchdir)$(target_prefix)/$(DLLIB)
  #{private_target ? "\trm -rf $(CARGO_TARGET)" : "\t@true"}

  clean:
  \trm -f $(DLLIB)

  .PHONY: all install clean
MAKE
