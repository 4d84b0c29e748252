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

import re
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


class _Walk:
    """Arrival times of the nets of one flattened module (iterative DFS, memoised: netlists are deep)."""

    def __init__(self, module: dict):
        self.module = module
        self.cells = module["cells"]
        self.driver: dict[int, tuple[str, str]] = {}  # net bit -> (cell, output port)
        for name, cell in self.cells.items():
            for port, bits in cell["connections"].items():
                if cell.get("port_directions", {}).get(port) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            self.driver[b] = (name, port)
        self.memo: dict[int, tuple[float, int, int, tuple]] = {}  # net bit -> (arrival, luts, carries, path)
        self.start_of: dict[int, str] = {}
        self.via: dict[int, tuple] = {}  # net bit -> the net bits along its slowest path, start first

    def source(self, bit: int) -> tuple[float, int, int, tuple]:
        """``(arrival, LUT levels, carry steps, cell types)`` at net ``bit``."""
        memo, start_of, via, cells = self.memo, self.start_of, self.via, self.cells
        stack = [bit]
        visiting: set[int] = set()
        while stack:
            b = stack[-1]
            if b in memo:
                stack.pop()
                continue
            visiting.add(b)
            if b not in self.driver:  # a top-level input or a constant
                memo[b] = (0.0, 0, 0, ("input",))
                start_of[b], via[b] = f"input bit {b}", (b,)
                stack.pop()
                continue
            name, port = self.driver[b]
            cell = cells[name]
            kind = cell["type"]
            ins = _comb_inputs(cell, port)
            if ins is None:  # a timing start point
                memo[b] = (_clock_to_out(cell, port), 0, 0, (kind,))
                start_of[b], via[b] = name, (b,)
                stack.pop()
                continue
            pending = [i for i in ins if isinstance(i[0], int) and i[0] not in memo and i[0] not in visiting]
            if pending:
                stack.extend(i[0] for i in pending)
                continue
            best = (0.0, 0, 0, ("const",))
            best_start, best_via = "constant", ()
            for net, extra in ins:
                if not isinstance(net, int) or net not in memo:  # a constant, or a loop back (not timed)
                    continue
                arr, luts, carries, path = memo[net]
                t = arr + extra
                if t > best[0]:
                    best, best_start, best_via = (t, luts, carries, path), start_of[net], via[net]
            arr, luts, carries, path = best
            if kind.startswith("LUT") or kind in ("MUXF7", "MUXF8") or kind in _LUTRAM or kind == "INV":
                luts += 1
            elif kind == "CARRY4":
                carries += 1
            memo[b] = (arr, luts, carries, path + (kind,))
            start_of[b], via[b] = best_start, best_via + (b,)
            stack.pop()
        return memo[bit]

    def endpoints(self):
        """``(delay, net bit, cell name or "output", cell type)`` of every timed end point's input bit."""
        for name, cell in self.cells.items():
            for port, bits in cell["connections"].items():
                if cell.get("port_directions", {}).get(port) != "input":
                    continue
                setup = _setup(cell, port)
                if setup is None:
                    continue
                for b in bits:
                    if isinstance(b, int):
                        yield self.source(b)[0] + T_NET + setup, b, name, cell["type"]
        for port in self.module["ports"].values():
            if port["direction"] == "output":
                for b in port["bits"]:
                    if isinstance(b, int):
                        yield self.source(b)[0], b, "output", "output"


def estimate(design: dict, top: str) -> TimingReport:
    """The slowest start-to-end path of module ``top`` of a flattened ``write_json`` netlist."""
    module = design["modules"][top]
    walk = _Walk(module)
    worst = (0.0, 0, 0, (), "", "")
    for delay, b, name, kind in walk.endpoints():
        if delay > worst[0]:
            _, luts, carries, path = walk.source(b)
            worst = (delay, luts, carries, path + (kind,), walk.start_of[b], name)
    delay, luts, carries, path, start, end = worst
    return TimingReport(round(delay, 3), round(1000.0 / delay, 1) if delay else float("inf"), luts, carries,
                        start, end, list(path))


@dataclass(frozen=True)
class PathReport:
    """The slowest path into one end point (a register, memory or DSP input named by its wire).

    Members
    -------
    delay_ns : float
    lut_levels, carry_steps : int
    end : str
        The end point's wire, its bit index dropped (all bits of a register count as one end point).
    start : str
        The start point's wire (the register, memory or DSP output the path leaves from).
    through : list of str
        The named wires along the path (Yosys's own ``$``-names left out), start to end.
    """

    delay_ns: float
    lut_levels: int
    carry_steps: int
    end: str
    start: str
    through: list

    def as_dict(self) -> dict:
        return asdict(self)


def _wire_names(module: dict) -> dict[int, str]:
    """Net bit -> a wire's name for it, a user-named wire (not a ``$``-name) where there is one."""
    names: dict[int, str] = {}
    for name, info in module["netnames"].items():
        name = name.removeprefix("$iopadmap$")  # a top-level port's net before its I/O buffer
        for i, b in enumerate(info["bits"]):
            if isinstance(b, int) and (b not in names or names[b].startswith("$") and not name.startswith("$")):
                names[b] = f"{name}[{i}]" if len(info["bits"]) > 1 else name
    return names


def slowest_paths(design: dict, top: str, n: int = 10) -> list[PathReport]:
    """The ``n`` slowest end points of module ``top`` and the slowest path into each, slowest first: where
    the next timing fix is (:func:`estimate` gives only the first). An end point is a wire, all its bits
    together."""
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n!r}")
    module = design["modules"][top]
    walk = _Walk(module)
    names = _wire_names(module)

    def wire(bit: int, fallback: str) -> str:
        return names.get(bit, fallback).rsplit("[", 1)[0]

    cells = module["cells"]

    def end_name(bit: int, cell: str, kind: str) -> str:
        if kind.startswith("FD"):  # a register: named by its output (the D net is often Yosys's own)
            q = [x for x in cells[cell]["connections"].get("Q", []) if isinstance(x, int)]
            return wire(q[0], cell) if q else cell
        # a memory's or DSP's cells (``buffer.memory.0.17``: column 0, row 17 of RAMB36) as one end point
        return wire(bit, cell) if kind == "output" else re.sub(r"(\.\d+)+$", "", cell)

    best: dict[str, tuple[float, int]] = {}
    for delay, b, name, kind in walk.endpoints():
        key = end_name(b, name, kind)
        if key not in best or delay > best[key][0]:
            best[key] = (delay, b)
    out = []
    for key, (delay, b) in sorted(best.items(), key=lambda kv: -kv[1][0])[:n]:
        _, luts, carries, _ = walk.source(b)
        chain = walk.via[b]
        through = []
        for net in chain[1:]:
            w = wire(net, "$")
            if not w.startswith("$") and (not through or through[-1] != w) and w != key:
                through.append(w)
        out.append(PathReport(round(delay, 3), luts, carries, key, wire(chain[0], walk.start_of[b]), through))
    return out


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
