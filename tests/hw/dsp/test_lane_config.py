# amaranth: UnusedElaboratable=no
"""DSP48E1 configuration: the Instance form carries DSP48E1_ATTRIBUTES, and Yosys maps the behavioural form
to exactly one DSP48E1 configured the same way (registers, OPMODE switching, clock enables, packed fields).

Yosys runs once per mode in a module fixture, all modes in parallel: ``synth_xilinx`` on the behavioural
form (about 7 s each) and a plain ``proc; flatten; opt`` read of the Instance form (under a second).
"""

import json
import re
import subprocess

import pytest
from amaranth.back import verilog

from hw.dsp.lane import ALUMODE_ADD, DSP48E1_ATTRIBUTES, INMODE_A2_B2, PackedDspLane
from hw.dsp.packing import plan
from hw.platform.synth import synth_xilinx, yosys_binary

SYNTH_MODES = [(4, 4), (8, 8), (16, 4)]
TOP = "lane"
#: DSP48E1 defaults (UG479 table 2-2) of the attributes Yosys leaves off a cell when they keep them.
UG479_DEFAULTS = {"MASK": 0x3FFFFFFFFFFF, "PATTERN": 0, "SEL_MASK": "MASK", "SEL_PATTERN": "PATTERN",
                  "USE_PATTERN_DETECT": "NO_PATDET", "AUTORESET_PATDET": "NO_RESET"}
#: Z multiplexer sources by OPMODE[6:4] (UG479 table 2-9).
Z_SOURCES = {0b000: "0", 0b001: "PCIN", 0b010: "P", 0b011: "C", 0b100: "P", 0b101: "PCIN>>17",
             0b110: "P>>17"}


def _ids(pairs):
    return [f"{w}x{a}" for w, a in pairs]


# -- reading parameters -----------------------------------------------------------------------------------

def verilog_value(text: str) -> int | str:
    """A Verilog parameter value as Amaranth writes it: ``"DIRECT"``, ``32'd1``, ``46'h3fff...``, ``7``."""
    text = text.strip()
    if text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    literal = re.fullmatch(r"(?:\d+)?'s?([bdho])([0-9a-fA-F_]+)", text)
    if literal:
        return int(literal.group(2).replace("_", ""), {"b": 2, "d": 10, "h": 16, "o": 8}[literal.group(1)])
    return int(text)


def instance_parameters(text: str, cell: str = "DSP48E1") -> dict[str, int | str]:
    """The parameters of the one ``cell`` instantiation in Verilog ``text``."""
    found = re.findall(rf"^\s*{cell}\s*#\((.*?)\)\s*\w+\s*\(", text, flags=re.MULTILINE | re.DOTALL)
    assert len(found) == 1, f"expected one {cell} instantiation, found {len(found)}"
    return {name: verilog_value(value) for name, value in re.findall(r"\.(\w+)\(([^()]*)\)", found[0])}


def yosys_value(value) -> int | str:
    """A Yosys JSON parameter: integers are binary strings (MSB first), strings are themselves; a string
    made of binary digits only gets a trailing space (Yosys' escape)."""
    if isinstance(value, int):
        return value
    if value and set(value) <= {"0", "1"}:
        return int(value, 2)
    if value.endswith(" ") and set(value[:-1]) <= {"0", "1"}:
        return value[:-1]
    return value


def dsp_cells(netlist: dict, top: str = TOP) -> list[dict]:
    """The DSP48E1 cells of module ``top`` in a Yosys JSON netlist, parameters converted to int / str."""
    cells = netlist["modules"][top]["cells"].values()
    return [{"parameters": {k: yosys_value(v) for k, v in c["parameters"].items()},
             "connections": c["connections"]} for c in cells if c["type"] == "DSP48E1"]


def dsp_parameter(cell: dict, name: str) -> int | str:
    """A DSP48E1 cell's parameter, or its UG479 default when Yosys left it off."""
    return cell["parameters"].get(name, UG479_DEFAULTS.get(name))


# -- reading connections ----------------------------------------------------------------------------------

def is_constant(bit) -> bool:
    return isinstance(bit, str)  # Yosys JSON: "0", "1", "x", "z" constants, integers are nets


def constant(bits) -> int:
    """The value of an all-constant, fully defined connection (LSB first)."""
    assert all(b in ("0", "1") for b in bits), f"not a defined constant: {bits}"
    return sum(1 << k for k, b in enumerate(bits) if b == "1")


def net_positions(bits) -> set[int]:
    """Bit positions of a connection driven by nets, the rest being constant 0."""
    assert all(b == "0" or not is_constant(b) for b in bits), f"constant bits other than 0: {bits}"
    return {k for k, b in enumerate(bits) if not is_constant(b)}


def z_alternatives(conn: dict) -> set[str]:
    """The Z multiplexer sources OPMODE can select (one non-constant Z bit), constant-zero ones as "0"."""
    z_bits = conn["OPMODE"][4:7]
    switching = [k for k, b in enumerate(z_bits) if not is_constant(b)]
    assert len(switching) == 1, f"OPMODE[6:4] = {z_bits}: expected exactly one switching bit"
    fixed = sum(1 << k for k, b in enumerate(z_bits) if b == "1")
    sources = set()
    for value in (fixed, fixed | 1 << switching[0]):
        source = Z_SOURCES[value]
        if source in ("C", "PCIN") and constant(conn[source]) == 0:
            source = "0"
        sources.add(source)
    return sources


def expected_fields(p) -> tuple[set[int], set[int]]:
    """A and B bit positions the plan's packed operand fields occupy."""
    x_bits, y_bits = (p.weight_chunk, p.act_chunk) if p.weight_port == "A" else (p.act_chunk, p.weight_chunk)
    a_bits = {off + k for off in p.a_layout() for k in range(x_bits)}
    b_bits = {off + k for off in p.b_layout() for k in range(y_bits)}
    return a_bits, b_bits


# -- Yosys ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def netlists(tmp_path_factory):
    """``{(mode, form): Yosys JSON}`` for SYNTH_MODES, ``form`` "behavioural" (synth_xilinx) or "instance"."""
    folder = tmp_path_factory.mktemp("dsp_config")
    scripts = {}
    for pair in SYNTH_MODES:
        for form in ("behavioural", "instance"):
            stem = folder / f"{form}_{pair[0]}x{pair[1]}"
            lane = PackedDspLane(plan(*pair), instance=form == "instance")
            stem.with_suffix(".v").write_text(verilog.convert(lane, name=TOP, emit_src=False))
            flow = (synth_xilinx(TOP) if form == "behavioural" else
                    f"hierarchy -top {TOP}; proc; flatten; opt -full")
            library = "read_verilog -lib +/xilinx/cells_sim.v; " if form == "instance" else ""
            scripts[pair, form] = (f"{library}read_verilog {stem}.v; {flow}; write_json {stem}.json", stem)
    procs = {key: subprocess.Popen([yosys_binary(), "-q", "-p", script], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
             for key, (script, _) in scripts.items()}
    out = {}
    for key, proc in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"yosys failed on {key}:\n{log[-3000:]}"
        out[key] = json.loads(scripts[key][1].with_suffix(".json").read_text())
    return out


# -- the Instance form ------------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [(4, 4), (8, 4), (8, 8), (16, 4), (16, 8), (32, 8), (2, 2), (32, 32)],
                         ids=_ids([(4, 4), (8, 4), (8, 8), (16, 4), (16, 8), (32, 8), (2, 2), (32, 32)]))
def test_instance_parameters_are_the_attribute_table(pair):
    text = verilog.convert(PackedDspLane(plan(*pair), instance=True), name=TOP, emit_src=False)
    assert instance_parameters(text) == DSP48E1_ATTRIBUTES


def test_attribute_table_is_consistent():
    """UG479's rules: cascade registers equal the input registers; D port and pre-adder off together."""
    attrs = DSP48E1_ATTRIBUTES
    assert attrs["ACASCREG"] == attrs["AREG"] and attrs["BCASCREG"] == attrs["BREG"]
    assert attrs["USE_DPORT"] == "FALSE" and attrs["ADREG"] == attrs["DREG"] == 0
    assert attrs["MREG"] == attrs["PREG"] == 1 and attrs["USE_MULT"] == "MULTIPLY"


# -- the behavioural form through Yosys -------------------------------------------------------------------

@pytest.mark.parametrize("pair", SYNTH_MODES, ids=_ids(SYNTH_MODES))
def test_behavioural_lane_maps_to_one_dsp48e1(pair, netlists):
    netlist = netlists[pair, "behavioural"]
    assert len(dsp_cells(netlist)) == 1
    types = {cell["type"] for cell in netlist["modules"][TOP]["cells"].values()}
    assert not [t for t in types if t.startswith("$") or "MUL" in t], types  # nothing left unmapped


@pytest.mark.parametrize("pair", SYNTH_MODES, ids=_ids(SYNTH_MODES))
def test_mapped_dsp_registers_and_modes_match_the_table(pair, netlists):
    (cell,) = dsp_cells(netlists[pair, "behavioural"])
    for name in ("AREG", "BREG", "MREG", "PREG", "USE_DPORT", "USE_MULT"):
        assert name in cell["parameters"], f"Yosys left {name} off"
        assert cell["parameters"][name] == DSP48E1_ATTRIBUTES[name], name


@pytest.mark.parametrize("pair", SYNTH_MODES, ids=_ids(SYNTH_MODES))
def test_mapped_dsp_matches_every_attribute(pair, netlists):
    (cell,) = dsp_cells(netlists[pair, "behavioural"])
    got = {name: dsp_parameter(cell, name) for name in DSP48E1_ATTRIBUTES}
    assert got == DSP48E1_ATTRIBUTES


@pytest.mark.parametrize("pair", SYNTH_MODES, ids=_ids(SYNTH_MODES))
def test_mapped_opmode_switches_z_only(pair, netlists):
    """X = Y = M (01, 01) constant; OPMODE[4] is the accumulate / restart switch between Z = P and Z = C,
    with C tied to zero."""
    (cell,) = dsp_cells(netlists[pair, "behavioural"])
    opmode = cell["connections"]["OPMODE"]
    assert opmode[0:4] == ["1", "0", "1", "0"]
    assert not is_constant(opmode[4]) and is_constant(opmode[5]) and is_constant(opmode[6])
    assert z_alternatives(cell["connections"]) == {"P", "0"}


@pytest.mark.parametrize("pair", SYNTH_MODES, ids=_ids(SYNTH_MODES))
def test_forms_agree_on_controls_and_packed_fields(pair, netlists):
    """Both forms: the same ALU function, constant INMODE, clock enables driven by the lane (stalls),
    no resets, Z switched between P and zero, and the operand fields where the plan puts them (Yosys may
    swap A and B of a multiplication whose operands both fit either port)."""
    a_bits, b_bits = expected_fields(plan(*pair))
    for form in ("behavioural", "instance"):
        (cell,) = dsp_cells(netlists[pair, form])
        conn = cell["connections"]
        assert constant(conn["ALUMODE"]) == ALUMODE_ADD, form
        assert constant(conn["INMODE"]) == INMODE_A2_B2, form
        assert conn["OPMODE"][0:4] == ["1", "0", "1", "0"], form
        assert z_alternatives(conn) == {"P", "0"}, form
        assert not is_constant(conn["CEM"][0]) and not is_constant(conn["CEP"][0]), form
        assert conn["CEM"] != conn["CEP"], form  # P also holds while no product enters it
        for reset in ("RSTM", "RSTP"):
            assert constant(conn[reset]) == 0, (form, reset)
        fields = (net_positions(conn["A"]), net_positions(conn["B"]))
        assert fields in ((a_bits, b_bits), (b_bits, a_bits)), (form, fields)
        if form == "instance":
            assert fields == (a_bits, b_bits)
            assert {k: yosys_value(v) for k, v in cell["parameters"].items()} == DSP48E1_ATTRIBUTES
