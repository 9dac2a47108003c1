# frozen_string_literal: true

module Butterflies
  # rack.input of a request without a body: one shared object, so a GET
  # allocates no StringIO. It is always at its end; closing it does
  # nothing, since the next request gets the same object (Puma's NullIO
  # does the same).
  class NullInput
    def gets(*)
      nil
    end

    # read() is "", read(n) is nil at the end; a given buffer is emptied.
    def read(length = nil, buffer = nil)
      buffer&.clear
      return nil if length&.positive?

      buffer || "".b
    end

    def each
      return enum_for(:each) unless block_given?

      self
    end

    def rewind
      0
    end

    def size
      0
    end

    def eof?
      true
    end

    def external_encoding
      Encoding::ASCII_8BIT
    end

    def string
      "".b
    end

    def set_encoding(*)
      self
    end

    def binmode
      self
    end

    def close; end

    def closed?
      false
    end

    INSTANCE = new.freeze
  end
end
