# frozen_string_literal: true

require "rbconfig"

EXT_TARGET_DIR = "target/ext"
EXT_LIB = "lib/butterflies/butterflies.#{RbConfig::CONFIG['DLEXT']}".freeze

desc "Build the Rust extension into #{EXT_LIB}"
task :compile do
  sh "cargo", "build", "--release", "--features", "ruby", "--target-dir", EXT_TARGET_DIR
  built = File.join(EXT_TARGET_DIR, "release",
                    RbConfig::CONFIG["host_os"].match?(/darwin/) ? "libbutterflies.dylib" : "libbutterflies.so")
  # Copy to a new inode: a running server keeps its mapping of the old file.
  rm_f EXT_LIB
  cp built, EXT_LIB
end
