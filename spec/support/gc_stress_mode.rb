# frozen_string_literal: true

# `BUTTERFLIES_SPEC_GC_STRESS=FLAGS rspec` runs the whole suite with
# GC.stress = FLAGS in every server process the specs start (FLAGS as
# GC.stress takes them: 1 = a minor GC at every allocation, which finds a
# Ruby value the engine kept where the GC cannot see it; 0 = full marks, far
# slower). Every deadline is scaled by BUTTERFLIES_SPEC_TIME_SCALE (default
# 10 under stress), and examples tagged `timing: true`, which measure time
# or race a clock, are skipped, as are those tagged `stress: false`, which
# repeat through another real program (nginx, HAProxy, the ctl client, a
# notify socket) an engine path that other examples run under stress
# already. script/test-gc-stress runs it.
module GcStressMode
  FLAGS = ENV.fetch("BUTTERFLIES_SPEC_GC_STRESS", nil)
  BOOT = File.expand_path("gc_stress_boot.rb", __dir__)

  def self.on?
    !FLAGS.nil? && !FLAGS.empty?
  end

  # How much longer every wait may take.
  def self.time_scale
    Float(ENV.fetch("BUTTERFLIES_SPEC_TIME_SCALE", on? ? "10" : "1"))
  end

  def self.scale(seconds)
    seconds * time_scale
  end

  # Environment for a server process the specs start.
  def self.server_env
    return {} unless on?

    { "RUBYOPT" => [ENV.fetch("RUBYOPT", nil), "-r#{BOOT}"].compact.join(" ") }
  end
end
