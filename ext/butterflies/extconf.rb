# frozen_string_literal: true

# Writes the Makefile that builds the Rust extension with cargo. The rb_sys
# gem is not needed: the Makefile runs `cargo build --release` and copies the
# library to butterflies.so; `make install` honours sitearchdir and
# target_prefix as RubyGems passes them.

require "rbconfig"

crate_root = File.expand_path("../..", __dir__)

# The Rust toolchain: cargo on PATH, else rustup's ~/.cargo/bin. Too old or
# missing is one line that says what to do, not make's "cargo: not found".
rust_version = File.read(File.join(crate_root, "Cargo.toml"))[/^rust-version\s*=\s*"([\d.]+)"/, 1] || "1.85"
cargo = [ENV.fetch("CARGO", nil), "cargo", File.expand_path("~/.cargo/bin/cargo")].compact.find do |candidate|
  system(candidate, "--version", out: File::NULL, err: File::NULL)
end
unless cargo
  abort "butterflies: building the extension needs Rust #{rust_version} or newer (cargo), which was not found; " \
        "install it with rustup (https://rustup.rs), then install the gem again"
end
found = `#{cargo} --version`[/\d+\.\d+(\.\d+)?/].to_s
if Gem::Version.new(found) < Gem::Version.new(rust_version)
  abort "butterflies: building the extension needs Rust #{rust_version} or newer, but #{cargo} is #{found} " \
        "(Debian bookworm's apt cargo is 1.63); install a newer one with rustup (https://rustup.rs)"
end

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
