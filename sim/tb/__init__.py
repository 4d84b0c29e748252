"""cocotb testbenches, one per design; they run inside the simulator, started by the runners in :mod:`sim`.

:mod:`sim.tb.stream` is their common base (clock, reset, transactors, stall patterns, watchdog, result
record); :mod:`sim.tb.accelerator` tests ``mpq_accel``, :mod:`sim.tb.dsp_lane` the packed DSP lane.
"""
