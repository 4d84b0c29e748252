"""config_for: the smallest array configuration that runs given images (what the controller would accept)."""

import dataclasses

import numpy as np
import pytest

from hw.array.sizing import BUFFER_QUANTUM, config_for, needs
from model.errors import UserError
from model.export.image_v4 import pack_vertical
from model.export.layout_v3 import pack as pack_v3
from tests.hw.array.test_top import _with_v3_layer
from tests.model.export.test_image_v4 import random_net as random_vertical_net
from tests.model.export.test_layout_v3 import resnet_like


def test_needs_of_a_resnet_like_image():
    words = pack_v3(resnet_like(np.random.default_rng(0)))[0]
    n = needs(words)
    # input 1x8x8; stem 2x8x8; blocks 2x8x8 and 4x4x4 (stride 2); fan-ins up to 4 * 9; 4 channels; the
    # second block's conv2 (fan-in 36) adds the shortcut of its 2-channel input: 38 patch rows
    assert n == {"buffer_words": len(words), "fmap_rows": 16, "row_codes": 8, "fan_in": 36, "patch_rows": 38,
                 "channels": 4, "out_width": 8, "vertical": False}


@pytest.mark.parametrize(("layer", "fields", "named"), [(0, {"stride": 3}, "3, 0"), (0, {"pool": 3}, "1, 3"),
                                                       (3, {"stride": 4}, "4, 0")])
def test_needs_refuses_a_stride_or_pool_the_array_does_not_run(layer, fields, named):
    """Strides 3-4 and pool windows past 2 are in the integer contract but not on the array (its controller ends
    such a layer with BAD_GEOMETRY): :func:`needs` says so before a build, naming the layer and what runs."""
    words = pack_v3(resnet_like(np.random.default_rng(0)))[0].astype(np.int64)
    with pytest.raises(UserError, match=rf"bad.bin: layer {layer} fields 'stride', 'pool' are {named}; the array "
                                        r"runs strides 1 and 2 and max-pool windows up to 2"):
        needs(_with_v3_layer(words, layer, **fields)[0], where="bad.bin")


def test_config_holds_the_widest_row_and_every_field():
    words = pack_v3(resnet_like(np.random.default_rng(0)))[0]
    cfg = config_for([words], engines=3)
    assert cfg.engines == 3 and cfg.lanes == 4 and cfg.pixels == 8  # two pixels a lane
    assert cfg.buffer_words >= len(words) and cfg.buffer_words % BUFFER_QUANTUM == 0
    assert cfg.buffer_words - len(words) < BUFFER_QUANTUM
    assert (1 << cfg.fan_in_width) > 38 and (1 << cfg.channel_bits) >= 4 and cfg.row_codes >= 8
    assert not cfg.vertical  # a version 3 image needs no plane decoders
    assert config_for([words], engines=3, vertical=True).vertical  # unless asked for
    with pytest.raises(UserError, match=r"--lanes 3: .* output rows of 8 pixels: allowed --lanes >= 4"):
        config_for([words], engines=1, lanes=3)


def test_a_build_of_map_rows_past_255_codes_is_refused():
    """The geometry fields hold maps up to 255 x 255: a build whose rows hold more would let a header of 256 codes
    a row through its check (``in_width <= row_codes``) into input columns counted in 8 bits, which never end."""
    words = pack_v3(resnet_like(np.random.default_rng(0)))[0]
    cfg = config_for([words], engines=1)
    dataclasses.replace(cfg, row_codes=255).check()  # (ConvArray checks its config; check() raises or not)
    with pytest.raises(ValueError, match="row_codes must be at most 255 .* not 256"):
        dataclasses.replace(cfg, row_codes=256).check()


def test_refuses_what_is_not_a_version_3_image():
    words = pack_v3(resnet_like(np.random.default_rng(0)))[0].copy()
    words[1] = 2
    with pytest.raises(UserError, match="version"):
        needs(words)
    with pytest.raises(UserError, match="magic"):
        needs(np.zeros(8, dtype=np.uint32))


def test_a_version_4_image_gets_the_plane_decoders():
    words = pack_vertical(random_vertical_net(7, sizes=(20, 12, 8, 6), widths=(2, 3), rows=1))
    assert needs(words)["vertical"] and config_for([words], engines=2).vertical
    v3 = pack_v3(resnet_like(np.random.default_rng(0)))[0]
    assert config_for([v3, words], engines=2).vertical  # any version 4 image among them
