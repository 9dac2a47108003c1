# frozen_string_literal: true

module Butterflies
  # The Rack 3 stream the engine hands to streaming bodies, and through
  # which it writes `each` bodies (the class and its I/O methods are defined
  # in Rust: src/ruby/stream.rs).
  class Stream
    # Writes an `each` body into `stream`, chunk by chunk, as the app
    # produces them. The engine calls this (Rust cannot pass Ruby a
    # capturing block); being a real method, it names itself in backtraces.
    def self.write_each(body, stream)
      body.each { |chunk| stream.write(chunk) }
    end
  end
end
