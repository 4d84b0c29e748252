"""cocotb simulation of the generated Verilog (Icarus Verilog or Verilator).

:mod:`sim.transactors` (stream source and sink), :mod:`sim.scoreboard` and :mod:`sim.payload` are the
verification components every testbench uses; :mod:`sim.tb` holds the testbenches, one per design, that run
inside the simulator; :mod:`sim.runner` and :mod:`sim.lane_runner` build the Verilog and run them from Python
(:func:`sim.runner.run_accelerator`, :func:`sim.lane_runner.run_dsp_lane`).
"""
