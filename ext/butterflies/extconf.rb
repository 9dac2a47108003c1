# frozen_string_literal: true

# Writes the Makefile that builds the Rust extension with cargo. The rb_sys
# gem is not needed: the Makefile runs `cargo build --release` and copies the
# library to butterflies.so; `make install` honours sitearchdir and
# target_prefix as RubyGems passes them.

require "rbconfig"

crate_root = File.expand_path("../..", __dir__)
target_dir = ENV.fetch("CARGO_TARGET_DIR", File.join(__dir__, "target"))
private_target = ENV["CARGO_TARGET_DIR"].nil?
dlext = RbConfig::CONFIG["DLEXT"]
lib_name = RbConfig::CONFIG["host_os"].match?(/darwin/) ? "libbutterflies.dylib" : "libbutterflies.so"
sitearch = RbConfig::CONFIG["sitearchdir"]

File.write("Makefile", <<~MAKE)
  CARGO ?= cargo
  RUBY = #{RbConfig.ruby}
  CRATE_ROOT = #{crate_root}
  CARGO_TARGET = #{target_dir}
  DLLIB = butterflies.#{dlext}
  sitearchdir = #{sitearch}
  target_prefix = /butterflies
  DESTDIR =

  all: $(DLLIB)

  $(DLLIB):
  \tRUBY=$(RUBY) $(CARGO) build --release --features ruby --manifest-path $(CRATE_ROOT)/Cargo.toml --target-dir $(CARGO_TARGET)
  \tcp $(CARGO_TARGET)/release/#{lib_name} $(DLLIB)

  install: $(DLLIB)
  \tmkdir -p $(DESTDIR)$(sitearchdir)$(target_prefix)
  \tcp $(DLLIB) $(DESTDIR)$(sitearchdir)$(target_prefix)/$(DLLIB)
  #{private_target ? "\trm -rf $(CARGO_TARGET)" : "\t@true"}

  clean:
  \trm -f $(DLLIB)

  .PHONY: all install clean
MAKE
