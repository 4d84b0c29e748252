"""sim/reads.py: the words an image's run reads, as the array's counters must show them.

The models themselves are checked against the RTL where the array runs: tests/hw/array/test_top.py (every network
of ``check_net`` and the version 4 runs of ``check_vertical_reads``), tests/sim/test_sim_command.py (``sim --core
array`` on a conv image, a vertical image at a width and at a table row), the short ``bench fuzz`` run of
tests/sim/bench/test_fuzz.py and tests/sim/bench/test_accel.py's real chunk. Here: what a run is compared by.
"""

import dataclasses

import numpy as np
import pytest

from model.export.golden_vertical import TableRow
from model.export.image_v4 import pack_vertical
from model.export.layout_v3 import pack as pack_v3
from sim.reads import (
    LAST_EDGE_TABLE_READ,
    TABLE_ROW,
    array_words_read,
    control_words_read,
    read_mismatches,
    vertical_control_words_read,
    vertical_weight_words_read,
    weight_words_read,
    words_read,
)
from tests.hw.array.test_top import CONFIG, VCONFIG
from tests.hw.netgen import random_network
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.model.export.test_layout_v3 import resnet_like


def test_read_mismatches_count_images_that_differ_and_images_that_did_not_come_back():
    assert read_mismatches([5, 5, 5], [9, 9, 9], (5, 9), 3) == 0
    assert read_mismatches([5, 4, 5], [9, 9, 10], (5, 9), 3) == 2  # one weight word short, one word over
    assert read_mismatches([5], [9], (5, 9), 3) == 2  # two images never came back
    with pytest.raises(ValueError):
        read_mismatches([5, 5], [9], (5, 9), 2)  # the two counters of one run have one entry an image
    with pytest.raises(ValueError, match="3 images' counters for a run of 2 images"):
        read_mismatches([5, 5, 5], [9, 9, 9], (5, 9), 2)


def test_a_version_3_image_reads_its_weight_words_then_the_controllers():
    net = resnet_like(np.random.default_rng(3))
    words, _, regions = pack_v3(net)
    weights, control = weight_words_read(net, CONFIG, regions), control_words_read(net, CONFIG, regions)
    assert 0 < weights and 0 < control
    assert words_read(net, CONFIG) == words_read(net, CONFIG, regions=regions) == (weights, weights + control)
    assert array_words_read(words, net, CONFIG) == (weights, weights + control)
    # a tile a layer more, its rows' words again: narrower tiles cut the conv layers' maps into more of them
    narrow = dataclasses.replace(CONFIG, lanes=2)
    assert weight_words_read(net, narrow, regions) > weights and control_words_read(net, narrow, regions) > control


def test_an_mlp_reads_at_least_a_word_a_row_whatever_the_lanes():
    net = random_network(np.random.default_rng(1), sizes=(23, 17, 5))
    regions = pack_v3(net)[2]
    rows = sum(len(region.stream.row_ptr) for region in regions)
    weights = weight_words_read(net, CONFIG, regions)
    assert weights >= rows  # at least the word each row starts in, whatever the lanes
    assert weight_words_read(net, dataclasses.replace(CONFIG, lanes=2), regions) == weights


@pytest.mark.parametrize(("precision", "bits"), [(0, 0), (2, 2), (4, 4), (0x12, 2), (TABLE_ROW, TableRow(0)),
                                                 (TABLE_ROW + 1, TableRow(1))])
def test_a_version_4_image_is_read_back_at_the_precision_register(precision, bits):
    """``array_words_read`` reads a version 4 image's network from its words and its widths from the shell's
    ``precision`` as the testbench drives the array (0 the source width, a stored width in the low four bits,
    ``TABLE_ROW + r`` a table row, with the last edge's unused table word)."""
    net = random_vertical_net(8, sizes=(12, 8, 8, 4), widths=(2, 3, 4), rows=2)
    words = pack_vertical(net).astype(np.int64)
    weights = vertical_weight_words_read(net, bits, VCONFIG, words)
    control = vertical_control_words_read(net, bits, VCONFIG, words)
    extra = LAST_EDGE_TABLE_READ if precision >= TABLE_ROW else 0
    assert array_words_read(words, None, VCONFIG, precision) == (weights, weights + control + extra)
    assert words_read(net, VCONFIG, bits) == (weights, weights + control + extra)


def test_a_wider_run_reads_more_weight_words():
    """Each width's planes are words of their own: the 4-bit run reads the 2-bit run's words and two planes more."""
    net = random_vertical_net(8, sizes=(12, 8, 8, 4), widths=(2, 3, 4), rows=1)
    reads = [vertical_weight_words_read(net, b, VCONFIG) for b in (2, 3, 4)]
    assert reads[0] < reads[1] < reads[2] and reads[2] - reads[1] == reads[1] - reads[0]
