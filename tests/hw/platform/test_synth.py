"""Resource report parsing and the XC7Z020 capacity check."""

from hw.platform.synth import XC7Z020, format_table, parse_stat

STAT = """
=== mpq_accel ===
   Number of cells:               4354
     BUFG                            1
     CARRY4                        197
     DSP48E1                       {dsp}
     FDRE                         1196
     FDSE                            4
     LUT1                           32
     LUT2                          685
     LUT6                          538
     RAM32M                         17
     RAM64M                          6
     RAMB36E1                        2
     RAMB18E1                        3
"""


def test_counts_luts_luttram_flops_and_block_ram():
    res = parse_stat(STAT.format(dsp=5))
    assert res.dsp == 5
    assert res.lut == 32 + 685 + 538 + 4 * (17 + 6)  # LUTRAM primitives occupy four LUTs each
    assert res.ff == 1200
    assert res.bram36 == 2 + 3 / 2
    assert res.fits()


def test_over_capacity_does_not_fit():
    res = parse_stat(STAT.format(dsp=XC7Z020["dsp"] + 1))
    assert not res.fits()
    assert res.utilisation()["dsp"] > 1
    assert "DSP48E1" in format_table(res) and "221" in format_table(res)
