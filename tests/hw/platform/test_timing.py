"""The timing estimate on small netlists whose slowest path is known: a carry chain, LUT levels, a DSP."""


import pytest

from hw.platform.synth import dsp_configs, synthesize_netlist
from hw.platform.timing import (
    T_CARRY_STEP,
    T_CKO,
    T_DSP_ADD_SETUP,
    T_DSP_M_SETUP,
    T_NET,
    T_SETUP,
    estimate,
    slowest_paths,
)

pytestmark = pytest.mark.usefixtures("yosys")

ADDER = """
module top(input clk, input [63:0] a, input [63:0] b, output reg [63:0] s);
  reg [63:0] ra, rb;
  always @(posedge clk) begin ra <= a; rb <= b; s <= ra + rb; end
endmodule
"""

MULT = """
module top(input clk, input [15:0] a, input [15:0] b, output reg [31:0] p);
  reg [15:0] ra, rb; reg [31:0] m;
  always @(posedge clk) begin ra <= a; rb <= b; m <= ra * rb; p <= m; end
endmodule
"""


def test_a_registered_64_bit_adder_is_one_carry_chain(tmp_path):
    path = tmp_path / "adder.v"
    path.write_text(ADDER)
    res, design = synthesize_netlist(path, "top")
    report = estimate(design, "top")
    assert res.lut >= 64 and res.ff >= 192
    assert report.carry_steps == 16  # 64 bits, 4 per CARRY4
    assert report.path[0] == "FDRE" and report.path[-1] == "FDRE"
    # clock to Q, a net and the carry entry, 15 chain steps, the net to the FF and its setup
    assert report.delay_ns == pytest.approx(T_CKO + 0.45 + 0.12 + 0.45 + 0.40 + 15 * T_CARRY_STEP + 0.45 + T_SETUP,
                                            abs=0.6)
    assert report.fmax_mhz > 150


def test_a_registered_multiplier_maps_to_one_dsp(tmp_path):
    path = tmp_path / "mult.v"
    path.write_text(MULT)
    res, design = synthesize_netlist(path, "top")
    assert res.dsp == 1 and res.lut < 10
    configs = dsp_configs(design, "top")
    assert sum(configs.values()) == 1
    assert "MREG=1" in next(iter(configs)) or "PREG=1" in next(iter(configs))
    assert estimate(design, "top").fmax_mhz > 100


WIDE_MULT = """
module top(input clk, input signed [29:0] a, input signed [29:0] b, input signed [17:0] m,
           output reg signed [47:0] p);
  reg signed [29:0] ra, rb, t; reg signed [17:0] rm, m2;
  always @(posedge clk) begin ra <= a; rb <= b; rm <= m; t <= ra + rb; m2 <= rm; p <= t * m2; end
endmodule
"""


def test_a_dsp_with_registered_inputs_starts_a_path(tmp_path):
    """A 30 x 18-bit product takes two cascaded DSP48E1; Yosys registers ``t`` and ``m2`` in the first one's
    AREG/BREG, so the adder before them ends its path there and the product's path starts at them: the
    slowest path is the multiplier's (clock to out, the multiplier, the cascade into the second's P), not the
    adder and the multiplier in one cycle."""
    path = tmp_path / "wide.v"
    path.write_text(WIDE_MULT)
    res, design = synthesize_netlist(path, "top")
    assert res.dsp == 2
    report = estimate(design, "top")
    assert report.carry_steps == 0, report.path  # no carry chain in front of the multiplier
    assert report.path[0] == "DSP48E1"
    assert report.delay_ns == pytest.approx(T_CKO + T_DSP_M_SETUP + T_NET + T_DSP_ADD_SETUP, abs=0.01)


def test_a_yosys_run_past_its_timeout_is_killed_and_named(tmp_path):
    path = tmp_path / "adder.v"
    path.write_text(ADDER)
    with pytest.raises(RuntimeError, match=r"did not finish in 0 s \(killed\)"):
        synthesize_netlist(path, "top", timeout_s=0.001)


TWO_ADDERS = """
module top(input clk, input [63:0] a, input [63:0] b, output reg [63:0] wide, output reg [7:0] narrow);
  reg [63:0] ra, rb;
  always @(posedge clk) begin ra <= a; rb <= b; wide <= ra + rb; narrow <= ra[7:0] + rb[7:0]; end
endmodule
"""


def test_the_slowest_end_points_are_listed_by_register_slowest_first(tmp_path):
    path = tmp_path / "two.v"
    path.write_text(TWO_ADDERS)
    _, design = synthesize_netlist(path, "top")
    paths = slowest_paths(design, "top", n=10)
    ends = [p.end for p in paths]
    assert len(ends) == len(set(ends))  # one entry a register, all its bits together
    assert paths[0].end == "wide" and paths[0].delay_ns == estimate(design, "top").delay_ns
    assert paths[0].carry_steps == 16 and paths[0].start in ("ra", "rb")
    narrow = next(p for p in paths if p.end == "narrow")
    assert narrow.carry_steps == 2 and narrow.delay_ns < paths[0].delay_ns
    assert [p.delay_ns for p in paths] == sorted((p.delay_ns for p in paths), reverse=True)
    assert [p.end for p in slowest_paths(design, "top", n=1)] == ["wide"]
    with pytest.raises(ValueError, match="n must be >= 1, not 0"):
        slowest_paths(design, "top", n=0)
