# frozen_string_literal: true

module Butterflies
  # Loads the Rust extension (Butterflies::Engine). A platform gem carries
  # one prebuilt per Ruby ABI (butterflies/3.3/butterflies.so); the source
  # gem and a checkout build butterflies/butterflies.so.
  module Native
    module_function

    def abi
      RUBY_VERSION[/\A\d+\.\d+/]
    end

    def load
      ["butterflies/#{abi}/butterflies", "butterflies/butterflies"].each do |feature|
        return require(feature)
      rescue LoadError => e
        raise unless missing?(e, feature)
      end
      raise LoadError, not_built
    end

    # Whether `error` says `feature` is not there (and not, say, that the
    # library it is could not be loaded).
    def missing?(error, feature)
      error.path.to_s.end_with?(feature) || error.message.end_with?("-- #{feature}")
    end

    # The ABIs a platform gem's prebuilt engines are for, if this is one.
    def prebuilt
      Dir.glob(File.join(__dir__, "[0-9]*.[0-9]*", "butterflies.*")).map { |path| File.basename(File.dirname(path)) }.sort
    end

    def not_built
      if prebuilt.any?
        return "this Butterflies gem has prebuilt engines for Ruby #{prebuilt.join(' and ')}, not #{abi}: install " \
               "the source gem, which compiles one (gem install butterflies --platform ruby; it needs Rust " \
               "1.85 or newer and libclang)"
      end

      root = File.expand_path("../..", __dir__)
      "the Butterflies extension is not built: run `rake compile` in #{root} " \
        "(Bundler does not build extensions for gems given by path:)"
    end
  end
end
