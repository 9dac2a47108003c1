# frozen_string_literal: true

module Butterflies
  # Loads a rackup file into a Rack app, with Rack 2.2 and Rack 3 alike.
  module AppLoader
    module_function

    def load(path)
      raise AppLoadError, "no rackup file #{path} (name one, or run from the app's directory)" unless File.file?(path)

      require "rack"
      require "rack/builder"
      result = Rack::Builder.parse_file(File.expand_path(path))
      result.is_a?(Array) ? result.first : result # Rack 2 returns [app, options]
    rescue ScriptError, StandardError => e # ScriptError covers SyntaxError
      raise e if e.is_a?(AppLoadError)

      raise AppLoadError, "cannot load #{path}: #{e.class}: #{e.message.lines.first&.strip}"
    end
  end
end
