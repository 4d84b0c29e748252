"""``bench bmpq`` floors (model/bench/bmpq.py) on hand-written rows: 10x within 1 point of FP-32."""

import pytest

from model.bench.bmpq import floors, run_bmpq_bench
from model.errors import UserError
from tests.idx_files import write_idx_folder


def _row(target, ratio, drop):
    return {"target_compression": target, "compression_ratio": ratio, "accuracy_drop_pp": drop}


def test_floors_read_the_10x_row():
    rows = [_row(6.0, 7.67, -0.03), _row(10.0, 11.97, 0.26), _row(13.0, 13.93, 0.76)]
    assert floors(rows) == {
        "compression_ratio_10x": {"value": 11.97, "floor": 10.0, "op": ">=", "holds": True},
        "accuracy_drop_pp_10x": {"value": 0.26, "floor": 1.0, "op": "<=", "holds": True},
    }


@pytest.mark.parametrize(("ratio", "drop", "failing"), [(9.5, 0.2, ["compression_ratio_10x"]),
                                                         (10.5, 1.2, ["accuracy_drop_pp_10x"])])
def test_floors_fail(ratio, drop, failing):
    f = floors([_row(13.0, 14.0, 0.1), _row(10.0, ratio, drop)])
    assert [n for n, e in f.items() if not e["holds"]] == failing


def test_no_10x_row_is_unmeasured():
    assert all(e["value"] is None and not e["holds"] for e in floors([_row(6.0, 7.0, 0.0)]).values())


def test_images_the_vgg_cannot_take_are_refused_before_training(tmp_path):
    """8x8 images for the 4-block VGG (16 pixels at least): a UserError naming the folder, the shape and the sides
    allowed, before anything trains or is written (not the network's ValueError)."""
    root = write_idx_folder(tmp_path / "idx", n_train=20, n_test=10, side=8)
    with pytest.raises(UserError, match=r"bench bmpq: the data folder '.*idx' \(--data-root\) holds images of shape "
                                        r"\(1, 8, 8\); .*needs \(1, H, W\) with H and W in 16\.\.1024"):
        run_bmpq_bench(tmp_path / "out" / "bmpq.json", root=root, png_path=tmp_path / "out" / "bmpq.png",
                       progress=False)
    assert not (tmp_path / "out").exists()
