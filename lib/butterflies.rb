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
require "butterflies/log"
require "butterflies/native"
Butterflies::Native.load
require "butterflies/stream"
require "butterflies/tls_bind"
require "butterflies/binds"
require "butterflies/dev_cert"
require "butterflies/configuration"
require "butterflies/dsl"
require "butterflies/signal_queue"
require "butterflies/systemd"
require "butterflies/log_files"
require "butterflies/listeners"
require "butterflies/database_pool"
require "butterflies/runtime"
require "butterflies/server"
require "butterflies/worker"
require "butterflies/phased_restart"
require "butterflies/stats_report"
require "butterflies/inquiry"
require "butterflies/control"
require "butterflies/process_files"
require "butterflies/lifecycle"
require "butterflies/memory"
require "butterflies/drain"
require "butterflies/respawn_throttle"
require "butterflies/worker_handle"
require "butterflies/cluster_state"
require "butterflies/cluster"

# Butterflies is a Rack web server whose engine is written in Rust.
#
#   Butterflies::Server.new(app, binds: ["tcp://127.0.0.1:9292"]).run
#
# See README.md, and docs/ARCHITECTURE.md for how a request flows.
module Butterflies
  # Makes $stdout and $stderr write through at once, in every mode: an app's
  # `puts` and a logger on STDOUT must reach a pipe or a file (Docker,
  # systemd, `| tee`) as they happen, not when the process exits. Puma and
  # Unicorn do the same.
  def self.sync_output!
    $stdout.sync = true
    $stderr.sync = true
  end

  # Seconds on a clock that only goes forward, for deadlines and ages.
  def self.monotonic
    Process.clock_gettime(Process::CLOCK_MONOTONIC)
  end

  # Flushes both before an exec replaces the process, so nothing printed
  # (a before_exec hook's output) is lost.
  def self.flush_output
    $stdout.flush
    $stderr.flush
  rescue IOError
    nil
  end
end
