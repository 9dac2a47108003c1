# frozen_string_literal: true

require_relative "lib/butterflies/version"

Gem::Specification.new do |spec|
  spec.name = "butterflies"
  spec.version = Butterflies::VERSION
  spec.summary = "A Rack web server whose engine is Rust"
  spec.description = "Butterflies serves Rack apps: Rust threads accept, parse and write " \
                     "HTTP/1.1 without the GVL; Ruby threads only run the app."
  spec.authors = ["The Butterflies developers"]
  spec.license = "MIT"
  spec.homepage = "https://example.invalid/butterflies"
  spec.required_ruby_version = ">= 3.1"

  spec.files = Dir[
    "Cargo.toml", "Cargo.lock", "build.rs", "src/**/*.rs",
    "ext/butterflies/extconf.rb", "lib/**/*.rb", "exe/*", "README.md", "docs/*.md"
  ]
  spec.bindir = "exe"
  spec.executables = ["butterflies"]
  spec.require_paths = ["lib"]
  spec.extensions = ["ext/butterflies/extconf.rb"]

  spec.add_dependency "rack", ">= 2.2", "< 4"
  spec.add_development_dependency "rake", ">= 13"
  spec.add_development_dependency "rspec", "~> 3.10"
end
