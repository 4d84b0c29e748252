"""``bench qat`` (model/bench/qat.py): the rows, the float twin, the floor."""

import json

import pytest
import torch
from torch import nn

from model.bench.qat import MODES, TICKET_MIX, float_twin, floors, quant_net, run_qat_bench
from model.quant.bmpq import BMPQ_LAYERS
from model.quant.lts import QuantConv2dLTS
from model.quant.pact import PACT
from model.quant.vertical import SwitchableBatchNorm, VerticalActQuant, VerticalWeight


def test_rows_for_every_arch_and_mode(tmp_path):
    out = tmp_path / "qat.json"
    threads = torch.get_num_threads()
    rows = run_qat_bench(out, steps=1, warmup=0, progress=False)
    assert torch.get_num_threads() == threads
    assert json.loads(out.read_text()) == rows
    assert [(r["arch"], r["mode"]) for r in rows] == [(a, m) for a in ("mlp", "vgg", "resnet20") for m in MODES]
    assert "vertical" in MODES
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
    vertical = quant_net("resnet20", "vertical")
    layers = [m for m in vertical.modules() if isinstance(m, VerticalWeight)]
    assert vertical.vertical["widths"] == [2, 3, 4]
    assert layers[0].edge and layers[-1].edge and not any(m.edge for m in layers[1:-1])
    assert any(isinstance(m, SwitchableBatchNorm) for m in vertical.modules())


def test_vertical_step_is_one_joint_step_over_every_width():
    from model.bench.qat import _Stepper

    model = quant_net("mlp", "vertical")
    stepper = _Stepper(model, torch.device("cpu"), lts=False, vertical=True)
    acts = [m for m in model.modules() if isinstance(m, VerticalActQuant)]
    before = model.linears[1].weight.detach().clone()
    x, y = torch.rand(8, 784), torch.randint(0, 10, (8,))
    assert stepper(x, y) > 0
    assert all(bool(a.initialized.all()) for a in acts)  # a forward ran at each of the three widths
    assert not torch.equal(before, model.linears[1].weight)  # and SGD stepped the shared weights


def test_float_twin_is_the_same_network_without_quantizers():
    model = quant_net("resnet20", "dorefa")
    twin = float_twin(model)
    assert not any(isinstance(m, PACT) for m in twin.modules())
    assert type(twin.conv1) is nn.Conv2d and type(twin.fc) is nn.Linear
    assert torch.equal(twin.layer2[0].conv1.weight, model.layer2[0].conv1.weight)
    assert twin.layer2[0].conv1.stride == (2, 2)
    assert twin(torch.rand(2, 784)).shape == (2, 10)
    vertical = quant_net("vgg", "vertical")
    vtwin = float_twin(vertical)
    assert not any(isinstance(m, VerticalWeight | VerticalActQuant | SwitchableBatchNorm) for m in vtwin.modules())
    first = next(m for m in vertical.modules() if isinstance(m, VerticalWeight))
    assert torch.equal(next(m for m in vtwin.modules() if isinstance(m, nn.Conv2d)).weight, first.weight)
    assert vtwin(torch.rand(2, 784)).shape == (2, 10)


def test_floor():
    row = {"arch": "resnet20", "mode": "dorefa", "device": "cpu", "step_ms": 14.0, "float_step_ms": 10.0}
    assert floors([{**row, "ratio": 1.4}])["dorefa_ratio_resnet20"] == {"value": 1.4, "floor": 1.5, "op": "<=",
                                                                        "holds": True}
    assert not floors([{**row, "ratio": 1.8}])["dorefa_ratio_resnet20"]["holds"]
    assert floors([])["dorefa_ratio_resnet20"]["value"] is None
