# amaranth: UnusedElaboratable=no
"""The register map table: its checks, its renderings and the slave's ports come from the same rows."""

import dataclasses
import re
from pathlib import Path

import pytest
from amaranth.hdl import Shape

from hw.array.status import Status as ArrayStatus
from hw.system.axi_lite import AxiLiteSlave
from hw.system.register_map import (
    REGISTER_MAP,
    SHELL_CODE_DESCRIPTIONS,
    SHELL_CODES_FROM,
    Access,
    Field,
    StatusCode,
    address_width,
    c_header,
    check_map,
    field,
    markdown_table,
    python_map,
)


def test_hls_control_convention():
    """The offsets and bits PYNQ users expect of an HLS core (ap_ctrl_hs at 0x00, GIE, IER, ISR)."""
    expect = {"ap_start": (0x00, 0), "ap_done": (0x00, 1), "ap_idle": (0x00, 2), "ap_ready": (0x00, 3),
              "auto_restart": (0x00, 7), "gie": (0x04, 0), "ier": (0x08, 0), "isr": (0x0C, 0)}
    for name, (offset, bit) in expect.items():
        f = field(name)
        assert (f.offset, f.bit) == (offset, bit), name
    assert field("ap_done").access == Access.COR and field("isr").access == Access.TOW
    assert min(f.offset for f in REGISTER_MAP if f.name not in expect) == 0x10  # arguments from 0x10
    for name in ("image_addr", "input_addr", "output_addr", "busy_cycles", "load_cycles"):
        assert field(name).width == 64 and field(name).offset % 8 == 0


def test_the_map_passes_its_check_and_covers_every_status_code():
    check_map()
    assert len({c.value for c in StatusCode}) == len(StatusCode)
    assert StatusCode.OK == 0 and {"BAD_MAGIC", "BAD_VERSION", "BAD_CHECKSUM", "BAD_GEOMETRY", "AXI_ERROR",
                                   "TIMEOUT"} <= StatusCode.__members__.keys()
    for status in ArrayStatus:  # the array's codes reach the register unchanged
        assert StatusCode[status.name] == status.value
    shell = [c for c in StatusCode if c.name not in ArrayStatus.__members__]
    assert shell and all(c >= SHELL_CODES_FROM for c in shell) and set(shell) == set(SHELL_CODE_DESCRIPTIONS)
    assert field("status").width >= max(StatusCode).bit_length()


@pytest.mark.parametrize("change,text", [
    ({"offset": 0x12}, "offset"),
    ({"offset": 0x14}, "overlap"),          # image_addr's high word
    ({"width": 0}, "width"),
    ({"width": 65}, "width"),
    ({"bit": 31, "width": 2}, "does not fit"),
    ({"reset": 1 << 40}, "reset"),
    ({"name": "ap_start"}, "unique"),
    ({"name": "Bad-Name"}, "unique"),
])
def test_check_map_rejects(change, text):
    extra = Field("extra", 0x58, 8, Access.RW, 0, "test")
    with pytest.raises(ValueError, match=text):
        check_map(REGISTER_MAP + (dataclasses.replace(extra, **change),))


def test_check_map_rejects_overlapping_bits_in_a_shared_word():
    with pytest.raises(ValueError, match="overlap 'ap_start'"):
        check_map(REGISTER_MAP + (Field("clash", 0x00, 1, Access.RW, 0, "x", bit=0),))
    check_map(REGISTER_MAP + (Field("spare", 0x00, 1, Access.RW, 0, "x", bit=5),))  # a free bit is fine


def test_check_map_rejects_wide_fields_of_other_kinds():
    with pytest.raises(ValueError, match="only RW and RO"):
        check_map(REGISTER_MAP + (Field("wide", 0x58, 40, Access.W1C, 0, "x"),))
    with pytest.raises(ValueError, match="one bit"):
        check_map(REGISTER_MAP + (Field("cmd", 0x58, 2, Access.SC, 0, "x"),))


def test_renderings_name_every_field_at_its_offset():
    header, table, mapping = c_header(), markdown_table(), python_map()
    for f in REGISTER_MAP:
        assert re.search(rf"#define MPQ_{f.name.upper()}_OFFSET 0x{f.offset:02X}u", header), f.name
        assert f"| {f.name} | {f.access.value} |" in table
        assert mapping[f.name]["offset"] == f.offset and mapping[f.name]["access"] == f.access.value
        if f.width > 32:
            assert f"#define MPQ_{f.name.upper()}_HI_OFFSET 0x{f.offset + 4:02X}u" in header
        else:
            assert f"#define MPQ_{f.name.upper()}_MASK 0x{f.mask:08X}u" in header
    for code in StatusCode:
        assert f"#define MPQ_STATUS_{code.name} {code.value}u" in header
        assert f"| {code.value} | {code.name} |" in table
    assert "#define MPQ_AP_DONE_MASK 0x00000002u" in header and "#define MPQ_ISR_OFFSET 0x0Cu" in header
    with pytest.raises(ValueError, match="prefix"):
        c_header(prefix="bad prefix")


def test_slave_ports_come_from_the_table():
    slave = AxiLiteSlave()
    assert slave.addr_width == address_width() == 7
    members = slave.signature.members
    for f in REGISTER_MAP:
        if f.name in ("gie", "ier", "isr"):
            assert f.name not in members
            continue
        assert f.name in members and Shape.cast(members[f.name].shape).width == f.width, f.name
        flow = members[f.name].flow.name
        assert flow == ("Out" if f.access in (Access.RW, Access.COH, Access.SC) else "In"), f.name
    for name in ("awaddr", "awvalid", "awready", "wdata", "wstrb", "wvalid", "wready", "bresp", "bvalid", "bready",
                 "araddr", "arvalid", "arready", "rdata", "rresp", "rvalid", "rready"):
        assert f"s_axi_control_{name}" in members
    assert "interrupt" in members


def test_slave_rejects_bad_maps():
    with pytest.raises(ValueError, match="prefix"):
        AxiLiteSlave(prefix="s axi")
    no_ready = tuple(f for f in REGISTER_MAP if f.name != "ap_ready")
    with pytest.raises(ValueError, match="ap_ready"):
        AxiLiteSlave(no_ready)
    no_gie = tuple(f for f in REGISTER_MAP if f.name != "gie")
    with pytest.raises(ValueError, match="gie"):
        AxiLiteSlave(no_gie)


def test_docs_page_shows_the_table():
    page = (Path(__file__).resolve().parents[3] / "docs" / "register_map.md").read_text()
    assert markdown_table() in page, "docs/register_map.md is stale: paste markdown_table() into it"
