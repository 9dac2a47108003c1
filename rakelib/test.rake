# frozen_string_literal: true

# What CI runs, task by task; `rake test` is all of it, and `script/test`
# is `rake test` after installing what is missing. With
# BUTTERFLIES_STACK=modern (script/test-modern, in its Debian trixie root)
# RuboCop and the GC.stress pass are left to the host's stack: two RuboCop
# versions would disagree, and CI's time is bounded.

MODERN = ENV["BUTTERFLIES_STACK"] == "modern"

desc "cargo fmt --check, clippy (core and extension), cargo test"
task :cargo do
  sh "cargo fmt --check"
  sh "cargo clippy --all-targets -- -D warnings"
  sh "cargo clippy --release --features ruby --target-dir #{EXT_TARGET_DIR} -- -D warnings"
  sh "cargo test"
end

desc "RuboCop with the project's .rubocop.yml"
task :rubocop do
  sh "rubocop" unless MODERN
end

desc "RSpec (integration specs start real servers)"
task spec: :compile do
  sh "bundle exec rspec"
end

desc "RSpec again, every server it starts under GC.stress"
task gc_stress: :compile do
  sh "script/test-gc-stress" unless MODERN
end

desc "Everything CI runs"
task test: %i[cargo rubocop spec gc_stress]
