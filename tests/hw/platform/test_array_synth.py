"""Parts synthesis of the array: one engine plus the shell with black-box engines adds up to what a
flattened synthesis of the whole array gives (on a tiny configuration, where the flattened run is quick)."""

import shutil
import threading

import pytest

from hw.array.top import ArrayConfig
from hw.platform.array_synth import ENGINE_TOP_NAME, LANE_DSP_CONFIG, check_lanes, lane_dsps, synthesize_array
from hw.platform.synth import synthesize_netlist
from hw.platform.verilog import ARRAY_TOP_NAME, array_verilog

pytestmark = pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys is installed by make test")

#: Without the version 4 path (plane decoders, activation sums), as `config_for` builds for version 3 images and
#: `bench accel` synthesises: the parts and the flattened run are what they check either way, in less Yosys time.
TINY = ArrayConfig(engines=2, lanes=1, buffer_words=1024, fmap_rows=64, row_codes=8, fan_in_width=6, channel_bits=3,
                   vertical=False)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """The parts synthesis, and beside it (a third Yosys process) the flattened synthesis of the same Verilog."""
    out = tmp_path_factory.mktemp("parts")
    flat_dir = tmp_path_factory.mktemp("flat")
    (flat_dir / "a.v").write_text(array_verilog(TINY))
    box = {}
    worker = threading.Thread(target=lambda: box.update(whole=synthesize_netlist(
        flat_dir / "a.v", ARRAY_TOP_NAME, log_path=flat_dir / "flat.log")[0]))
    worker.start()
    syn = synthesize_array(TINY, out)
    worker.join()
    return out, syn, box["whole"]


def test_the_total_is_the_shell_plus_every_engine(parts):
    out, syn, _ = parts
    assert (out / f"{ARRAY_TOP_NAME}.v").read_text() == array_verilog(TINY)
    assert (out / f"{ARRAY_TOP_NAME}.v").is_file() and (out / f"{ENGINE_TOP_NAME}.v").is_file()
    assert (out / "yosys_engine.log").is_file() and (out / "yosys_shell.log").is_file()
    e, s, t = syn.engine, syn.shell, syn.resources
    for key in ("dsp", "lut", "ff", "bram36"):
        assert getattr(t, key) == getattr(s, key) + 2 * getattr(e, key), key
    assert e.dsp >= TINY.lanes + 1  # the lanes and the requantizer's multipliers
    assert not any(k.startswith(f"{ARRAY_TOP_NAME}.engine") for k in t.cells)  # no black boxes in the totals
    assert sum(syn.dsp_configs.values()) == t.dsp
    assert lane_dsps(syn.dsp_configs) == TINY.engines * TINY.lanes  # one lane DSP48E1 per lane, nothing else like them
    assert syn.timing.delay_ns == max(syn.engine_timing.delay_ns, syn.shell_timing.delay_ns)
    assert syn.shell_paths[0].delay_ns == syn.shell_timing.delay_ns  # the slowest end point first
    assert syn.engine_paths[0].delay_ns == syn.engine_timing.delay_ns
    record = syn.as_dict()
    assert record["total"]["lut"] == t.lut and record["engines"] == 2
    assert record["shell_paths"][0]["end"] == syn.shell_paths[0].end


def test_the_parts_agree_with_a_flattened_synthesis(parts):
    _, syn, whole = parts
    assert syn.resources.dsp == whole.dsp and syn.resources.bram36 == whole.bram36
    # Optimisation across the engines' ports is all the flattened run may add: a few per cent at most.
    assert whole.lut <= syn.resources.lut * 1.02 and whole.lut >= syn.resources.lut * 0.90
    assert whole.ff <= syn.resources.ff * 1.02 and whole.ff >= syn.resources.ff * 0.90


def test_a_netlist_without_every_lane_is_refused():
    configs = {f"AREG=0 BREG=1 {LANE_DSP_CONFIG}": 32, "AREG=2 BREG=2 MREG=0 PREG=1 OPMODE=1010101": 1}
    check_lanes(configs, 32)
    with pytest.raises(RuntimeError, match="32 DSP48E1 in the lanes' configuration .* not its 42 lanes"):
        check_lanes(configs, 42)
