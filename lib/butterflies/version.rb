# frozen_string_literal: true

module Butterflies
  VERSION = "0.1.0"
end
