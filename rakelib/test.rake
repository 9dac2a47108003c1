# frozen_string_literal: true

desc "cargo fmt --check, clippy, cargo test"
task :cargo do
  sh "cargo fmt --check"
  sh "cargo clippy --all-targets -- -D warnings"
  sh "cargo clippy --release --features ruby --target-dir #{EXT_TARGET_DIR} -- -D warnings"
  sh "cargo test"
end

desc "RSpec (integration specs start real servers)"
task spec: :compile do
  sh "rspec"
end

desc "Everything CI runs"
task test: %i[cargo spec]
