"""``bench qat`` (model/bench/qat.py): the rows, the float twin, the floor."""

import json

import pytest
import torch
from torch import nn

from model.bench.qat import MODES, TICKET_MIX, float_twin, floors, quant_net, run_qat_bench
from model.quant.bmpq import BMPQ_LAYERS
from model.quant.lts import QuantConv2dLTS
from model.quant.pact import PACT


def test_rows_for_every_arch_and_mode(tmp_path):
    out = tmp_path / "qat.json"
    threads = torch.get_num_threads()
    rows = run_qat_bench(out, steps=1, warmup=0, progress=False)
    assert torch.get_num_threads() == threads
    assert json.loads(out.read_text()) == rows
    assert [(r["arch"], r["mode"]) for r in rows] == [(a, m) for a in ("mlp", "vgg", "resnet20") for m in MODES]
    for r in rows:
        assert set(r) == {"arch", "mode", "device", "step_ms", "float_step_ms", "ratio"} and r["device"] == "cpu"
        assert r["step_ms"] > 0 and r["float_step_ms"] > 0
        assert r["ratio"] == pytest.approx(r["step_ms"] / r["float_step_ms"])


def test_each_mode_builds_what_it_trains():
    dorefa = quant_net("resnet20", "dorefa")
    widths = torch.cat([layer.bit_width.flatten() for layer in dorefa.quant_layers()])
    assert set(widths.unique().tolist()) == set(TICKET_MIX)
    assert (widths == 0).float().mean().item() == pytest.approx(TICKET_MIX[0], abs=0.01)
    bmpq = [int(m.bits) for m in quant_net("vgg", "bmpq").modules() if isinstance(m, BMPQ_LAYERS)]
    assert bmpq[0] == bmpq[-1] == 16 and set(bmpq[1:-1]) == {4}
    lts = quant_net("vgg", "lts")
    assert any(isinstance(m, QuantConv2dLTS) for m in lts.modules())


def test_float_twin_is_the_same_network_without_quantizers():
    model = quant_net("resnet20", "dorefa")
    twin = float_twin(model)
    assert not any(isinstance(m, PACT) for m in twin.modules())
    assert type(twin.conv1) is nn.Conv2d and type(twin.fc) is nn.Linear
    assert torch.equal(twin.layer2[0].conv1.weight, model.layer2[0].conv1.weight)
    assert twin.layer2[0].conv1.stride == (2, 2)
    assert twin(torch.rand(2, 784)).shape == (2, 10)


def test_floor():
    row = {"arch": "resnet20", "mode": "dorefa", "device": "cpu", "step_ms": 14.0, "float_step_ms": 10.0}
    assert floors([{**row, "ratio": 1.4}])["dorefa_ratio_resnet20"] == {"value": 1.4, "floor": 1.5, "op": "<=",
                                                                        "holds": True}
    assert not floors([{**row, "ratio": 1.8}])["dorefa_ratio_resnet20"]["holds"]
    assert floors([])["dorefa_ratio_resnet20"]["value"] is None
