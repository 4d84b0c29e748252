"""Run the array's cocotb testbench (:mod:`sim.tb.array`) on its generated Verilog.

::

    from sim.array_runner import run_array
    result = run_array("out/mpq_array.v", words, inputs, expected, work_dir="out/sim", simulator="verilator")
    if not result["passed"]:
        print(result["mismatched_images"], result["log"])

Builds are cached per (Verilog text, simulator) as :func:`sim.runner.build` does; one build runs any image
that fits the configuration (the image is loaded through the load port by the testbench).
"""

from __future__ import annotations

import numpy as np

from sim.runner import build, check_images, check_timeout, run_test

TOPLEVEL = "mpq_array"
TEST_MODULE = "sim.tb.array"


def run_array(verilog_path, words, inputs, expected, *, work_dir, simulator: str = "icarus", stall: bool = True,
              seed: int = 0, timeout_cycles: int | None = None, keep_logs: bool = False) -> dict:
    """Load ``words`` (a version 3 image) into the array and run ``inputs`` ``[N, C H W]``; compare with
    ``expected`` ``[N, n_classes]``.

    Returns the testbench's record (:meth:`sim.tb.array.ArrayTB.result`: ``images``, ``mismatches``,
    ``statuses``, ``cycles_per_image``, ``image_cycles``, ``load_cycles``, ...) plus ``passed``, ``simulator``,
    ``wall_s``, ``build_dir`` and ``log``, as :func:`sim.runner.run_accelerator`.

    Raises
    ------
    ValueError
        Bad shapes or values.
    SimulationError
        The build failed or the simulation wrote no record.
    """
    return run_array_cases(verilog_path, [(words, inputs, expected)], work_dir=work_dir, simulator=simulator,
                           stall=stall, seed=seed, timeout_cycles=timeout_cycles, keep_logs=keep_logs)


def run_array_cases(verilog_path, cases, *, work_dir, simulator: str = "icarus", stall: bool = True, seed: int = 0,
                    timeout_cycles: int | None = None, keep_logs: bool = False) -> dict:
    """:func:`run_array` for several ``(words, inputs, expected)`` cases, one after the other on one RTL run
    (each image loaded through the load port, no reset between them). A case may have a fourth item: the
    widths a version 4 image runs at, encoded as the shell's ``precision`` register (a width, 0 the source
    width; ``0x80 + r`` row ``r`` of its Eq. 12 table)."""
    arrays = {"n_cases": np.array(len(cases))}
    if not cases:
        raise ValueError("cases must not be empty")
    for k, case in enumerate(cases):
        words, inputs, expected = case[:3]
        if len(case) > 3:
            if not isinstance(case[3], int) or not 0 <= case[3] < 0x100:
                raise ValueError(f"case {k}: precision must be an integer from 0 to 255, not {case[3]!r}")
            arrays[f"precision_{k}"] = np.array(case[3])
        words = np.asarray(words, dtype=np.int64)
        inputs, expected = check_images(inputs, expected, where=f"case {k}: ")
        if words.ndim != 1 or len(words) == 0 or words.min() < 0 or words.max() >= 1 << 32:
            raise ValueError(f"case {k}: words must be a non-empty vector of 32-bit words")
        arrays.update({f"words_{k}": words, f"inputs_{k}": inputs, f"expected_{k}": expected})
    check_timeout(timeout_cycles)
    build_dir = build(verilog_path, work_dir=work_dir, simulator=simulator, toplevel=TOPLEVEL, prefix="array")
    return run_test(build_dir, verilog_path, simulator=simulator, toplevel=TOPLEVEL, test_module=TEST_MODULE,
                    env_prefix="MPQA", case=arrays, stall=stall, seed=seed, timeout_cycles=timeout_cycles,
                    keep_logs=keep_logs)
