"""cocotb simulation of the generated accelerator Verilog (Icarus Verilog or Verilator).

:mod:`sim.tb_accelerator` is the testbench (driver, monitor, scoreboard) that runs inside the simulator;
:mod:`sim.runner` builds the Verilog and runs it from Python (:func:`sim.runner.run_accelerator`).
"""
