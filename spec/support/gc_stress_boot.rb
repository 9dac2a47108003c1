# frozen_string_literal: true

# Required (RUBYOPT=-r) into every server process the specs start in GC
# stress mode (spec/support/gc_stress_mode.rb): the garbage collector runs
# at every allocation from here on, through boot and every request.
GC.stress = Integer(ENV.fetch("BUTTERFLIES_SPEC_GC_STRESS"))
