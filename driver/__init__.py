"""Host driver of the Zynq accelerator (:class:`~driver.mpq_driver.MpqDriver`): one API on a PYNQ board
(:mod:`driver.pynq_backend`) and in RTL simulation (:mod:`sim.system.sim_backend`)."""
