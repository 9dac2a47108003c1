# frozen_string_literal: true

require "etc"
require "socket"
require "stringio"
# Rack 2.2's Lint calls URI.parse without requiring uri, and hides the
# NameError as "not a valid authority"; Puma and rackup load it too.
require "uri"
require "rbconfig"
require "butterflies/version"
require "butterflies/errors"
require "butterflies/null_input"
require "butterflies/butterflies" # the Rust extension: Butterflies::Engine
require "butterflies/binds"
require "butterflies/configuration"
require "butterflies/dsl"
require "butterflies/signal_queue"
require "butterflies/listeners"
require "butterflies/runtime"
require "butterflies/server"
require "butterflies/worker"
require "butterflies/cluster"

# Butterflies is a Rack web server whose engine is written in Rust.
#
#   Butterflies::Server.new(app, binds: ["tcp://127.0.0.1:9292"]).run
#
# See README.md, and docs/ARCHITECTURE.md for how a request flows.
module Butterflies
end
