"""Timing estimate of a ``synth_xilinx`` netlist: the slowest register-to-register path and its Fmax.

No Vivado here, so no placed-and-routed timing: this walks the flattened 7-series netlist Yosys maps
(:func:`hw.platform.synth.synthesize_netlist`: ``write_json`` after ``synth_xilinx -flatten``) and finds the path with the largest delay from a timing
start point (a flip-flop's Q, a block RAM's or a DSP48E1's registered output, a top-level input) to an end
point (a flip-flop's D/CE/R input, a block RAM's or DSP48E1's input, a top-level output), through LUTs,
carry chains (CARRY4), MUXF7/8 and LUTRAM reads. The delays are the -1 speed grade's data-sheet values
(DS187, "Zynq-7000 ... DC and AC Switching Characteristics", CLB / block RAM / DSP48E1 switching tables),
rounded, plus an assumed routing delay per net that leaves a slice:

====================  ========  ===============================================================
element               ns        note
====================  ========  ===============================================================
FF clock to Q         0.46      T_CKO
FF setup              0.10      T_DICK (D), CE and SR setups are similar or smaller
LUT                   0.12      T_ILO
routing per net       0.45      assumed (Vivado's typical 0.3-0.7 ns for a short net)
CARRY4 entry          0.40      S or DI input to CO3 (T_OPCYCK-like); the net into it counts too
CARRY4 CI -> CO       0.11      T_BYP: a chain step, dedicated routing (no net delay)
MUXF7 / MUXF8         0.30      T_IF7 / T_IF8 class
LUTRAM read           0.90      address to output of RAM32M/RAM64M (T_SHCKO-like for the read path)
block RAM clk to DO   2.45      T_RCKO_DO without the output register; 0.90 with DOREG
block RAM setup       0.50      address, data and enable setups
DSP48E1 A/B to MREG   3.40      T_DSPDCK_{A,B}_MREG class (multiplier with its M register)
DSP48E1 to AREG/BREG  0.30      input register setup
DSP48E1 C / P adder   1.70      C or PCIN input to PREG setup (T_DSPDCK_C_PREG class)
DSP48E1 P clk to out  0.60      PREG clock to P; 1.90 from MREG through the adder when PREG = 0
DSP48E1 AREG/BREG     0.46      clock to out of the input registers, then the multiplier (3.40) to P or
                                PCOUT when MREG = PREG = 0 (a slice whose inputs Yosys registered in
                                AREG/BREG is a start point, not a combinational step)
====================  ========  ===============================================================

So the figure is an estimate: it misses placement (long nets between distant slices), clock skew and
Vivado's optimisations (retiming, LUT combining), which move real results by tens of percent either way.
It is exact about the structure: how many LUT levels and carry steps a path has, and which register pairs
bound it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

T_CKO, T_SETUP, T_LUT, T_NET = 0.46, 0.10, 0.12, 0.45
T_CARRY_IN, T_CARRY_STEP, T_MUXF = 0.40, 0.11, 0.30
T_LUTRAM_READ, T_BRAM_CKO, T_BRAM_CKO_REG, T_BRAM_SETUP = 0.90, 2.45, 0.90, 0.50
T_DSP_M_SETUP, T_DSP_IREG_SETUP, T_DSP_ADD_SETUP, T_DSP_PCKO, T_DSP_MCKO = 3.40, 0.30, 1.70, 0.60, 1.90

_LUTRAM = ("RAM32M", "RAM64M", "RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM32X1S", "RAM64X1S", "RAM128X1S",
           "RAM256X1S")


@dataclass(frozen=True)
class TimingReport:
    """The slowest path of a netlist.

    Members
    -------
    delay_ns : float
        Estimated delay of the slowest path, setup included.
    fmax_mhz : float
        ``1000 / delay_ns``.
    lut_levels : int
        LUTs on that path (MUXF7/8 and LUTRAM reads counted as one level each).
    carry_steps : int
        CARRY4 cells on it (a 4-bit step each).
    start, end : str
        The cells (or ports) where it starts and ends.
    path : list of str
        The cell types along it.
    """

    delay_ns: float
    fmax_mhz: float
    lut_levels: int
    carry_steps: int
    start: str
    end: str
    path: list

    def as_dict(self) -> dict:
        return asdict(self)


def _param(cell: dict, name: str, default: int = 0) -> int:
    value = cell.get("parameters", {}).get(name, default)
    return int(value, 2) if isinstance(value, str) and set(value) <= {"0", "1"} else int(value)


def estimate(design: dict, top: str) -> TimingReport:
    """The slowest start-to-end path of module ``top`` of a flattened ``write_json`` netlist."""
    module = design["modules"][top]
    cells = module["cells"]
    driver: dict[int, tuple[str, str]] = {}  # net bit -> (cell, output port)
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver[b] = (name, port)

    memo: dict[int, tuple[float, int, int, tuple]] = {}  # net bit -> (arrival, luts, carries, path)
    start_of: dict[int, str] = {}

    def source(bit: int) -> tuple[float, int, int, tuple]:
        """Arrival at net ``bit`` (iterative DFS: netlists are deep)."""
        stack = [bit]
        visiting: set[int] = set()
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            visiting.add(b)
            if b not in driver:  # a top-level input or a constant
                memo[b] = (0.0, 0, 0, ("input",))
                start_of[b] = f"input bit {b}"
                stack.pop()
                continue
            name, port = driver[b]
            cell = cells[name]
            kind = cell["type"]
            ins = _comb_inputs(cell, port)
            if ins is None:  # a timing start point
                memo[b] = (_clock_to_out(cell, port), 0, 0, (kind,))
                start_of[b] = name
                stack.pop()
                continue
            pending = [i for i in ins if isinstance(i[0], int) and i[0] not in memo and i[0] not in visiting]
            if pending:
                stack.extend(i[0] for i in pending)
                continue
            best = (0.0, 0, 0, ("const",))
            best_start = "constant"
            for net, extra in ins:
                if not isinstance(net, int) or net not in memo:  # a constant, or a loop back (not timed)
                    continue
                arr, luts, carries, path = memo[net]
                t = arr + extra
                if t > best[0]:
                    best, best_start = (t, luts, carries, path), start_of[net]
            arr, luts, carries, path = best
            if kind.startswith("LUT") or kind in ("MUXF7", "MUXF8") or kind in _LUTRAM or kind == "INV":
                luts += 1
            elif kind == "CARRY4":
                carries += 1
            memo[b] = (arr, luts, carries, path + (kind,))
            start_of[b] = best_start
            stack.pop()
        return memo[bit]

    worst = (0.0, 0, 0, (), "", "")
    for name, cell in cells.items():
        for port, bits in cell["connections"].items():
            if cell.get("port_directions", {}).get(port) != "input":
                continue
            setup = _setup(cell, port)
            if setup is None:
                continue
            for b in bits:
                if isinstance(b, int):
                    arr, luts, carries, path = source(b)
                    t = arr + T_NET + setup
                    if t > worst[0]:
                        worst = (t, luts, carries, path + (cell["type"],), start_of[b], name)
    for port in module["ports"].values():
        if port["direction"] == "output":
            for b in port["bits"]:
                if isinstance(b, int):
                    arr, luts, carries, path = source(b)
                    if arr > worst[0]:
                        worst = (arr, luts, carries, path + ("output",), start_of[b], "output")
    delay, luts, carries, path, start, end = worst
    return TimingReport(round(delay, 3), round(1000.0 / delay, 1) if delay else float("inf"), luts, carries,
                        start, end, list(path))


def _clock_to_out(cell: dict, port: str) -> float:
    kind = cell["type"]
    if kind.startswith("RAMB"):
        return T_BRAM_CKO_REG if _param(cell, "DOA_REG") or _param(cell, "DOB_REG") else T_BRAM_CKO
    if kind == "DSP48E1":
        if _param(cell, "PREG", 1):
            return T_DSP_PCKO
        if _param(cell, "MREG", 1):
            return T_DSP_MCKO
        return T_CKO + T_DSP_M_SETUP  # from the A/B input registers through the multiplier
    return T_CKO


def _comb_inputs(cell: dict, port: str):
    """``[(net bit, delay from it to this output)]`` of a combinational output, None at a start point."""
    kind = cell["type"]
    conn = cell["connections"]
    dirs = cell.get("port_directions", {})
    inputs = [p for p in conn if dirs.get(p) == "input"]
    if kind.startswith("LUT") or kind == "INV":
        return [(b, T_NET + T_LUT) for p in inputs for b in conn[p]]
    if kind in ("MUXF7", "MUXF8"):
        return [(b, T_MUXF) for p in inputs for b in conn[p]]  # fed by neighbouring LUTs: no general routing
    if kind == "CARRY4":
        out = [(b, T_CARRY_STEP) for b in conn.get("CI", [])]
        out += [(b, T_NET + T_CARRY_IN) for p in ("S", "DI", "CYINIT") for b in conn.get(p, [])]
        return out
    if kind in _LUTRAM and port.startswith(("DO", "O", "SPO", "DPO")):
        read = [p for p in inputs if p.startswith(("ADDR", "A", "DPRA"))]
        return [(b, T_NET + T_LUTRAM_READ) for p in read for b in conn[p]]
    if kind == "DSP48E1" and not _param(cell, "PREG", 1) and not _param(cell, "MREG", 1):
        # Through the multiplier from the unregistered inputs only; with both registered, a start point.
        comb = [p for p, reg in (("A", "AREG"), ("B", "BREG")) if not _param(cell, reg, 1)]
        return [(b, T_NET + T_DSP_M_SETUP) for p in comb for b in conn.get(p, [])] or None
    return None  # FFs, block RAMs, registered DSPs, SRLs, clock buffers: start points


def _setup(cell: dict, port: str):
    """Setup time at an input that ends a path, None where the input is combinational."""
    kind = cell["type"]
    if kind.startswith("FD"):
        return None if port == "C" else T_SETUP
    if kind.startswith("RAMB"):
        return None if port.startswith("CLK") else T_BRAM_SETUP
    if kind in _LUTRAM:
        return None if port == "WCLK" or port.startswith(("ADDR", "DPRA")) and not port.startswith("ADDRD") \
            else T_SETUP
    if kind == "DSP48E1":
        if port == "CLK":
            return None
        if port in ("A", "B"):
            return T_DSP_IREG_SETUP if _param(cell, port + "REG", 1) else (
                T_DSP_M_SETUP if _param(cell, "MREG", 1) else None)
        if port in ("C", "PCIN", "OPMODE", "ALUMODE", "CARRYIN", "D"):
            return T_DSP_ADD_SETUP if _param(cell, "PREG", 1) else None
        return T_SETUP
    return None
