# frozen_string_literal: true

desc "Build the gem into pkg/"
task :build do
  mkdir_p "pkg"
  sh "gem build butterflies.gemspec --output pkg/butterflies-#{Butterflies::VERSION}.gem"
end

require_relative "../lib/butterflies/version"
