"""The compute ledger (prunekit.train.compute): what fit / evaluate / recalibrate_bn charge, resume, and that
counting perturbs nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from prunekit.cost.macs import measure_macs
from prunekit.errors import PrunekitError
from prunekit.train import evaluate, fit
from prunekit.train.bn import recalibrate_bn
from prunekit.train.compute import TRAIN_FACTOR, Ledger, forward_macs, use_ledger


class Net(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def batches(n: int = 5, bs: int = 6):
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(bs, 1, 8, 8, generator=g), torch.randint(0, 3, (bs,), generator=g)) for _ in range(n)
    ]


def test_forward_macs_counts_one_image_and_perturbs_nothing():
    net = Net()
    net.train()
    net.bn.eval()  # mixed modes, as during BN recalibration (inverted here)
    x = batches(1)[0][0]
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    macs = forward_macs(net, x)
    assert torch.equal(torch.rand(3), want)  # the RNG stream is untouched
    assert net.training and not net.bn.training and net.drop.training  # every module's mode restored
    assert macs == measure_macs(net, (1, 1, 8, 8)) == 8 * 9 * 64 + 8 * 3


def test_fit_charges_every_trained_image_once_across_a_resume(tmp_path):
    net, data = Net(), batches()
    ledger = Ledger(tmp_path / "compute.json")
    ckpt = tmp_path / "fit.ckpt"
    with use_ledger(ledger):
        fit(net, data, {"epochs": 2, "lr": 0.01}, ckpt_path=ckpt)
        fit(net, data, {"epochs": 2, "lr": 0.01}, ckpt_path=ckpt, resume=True)  # complete
    per_image = measure_macs(net, (1, 1, 8, 8))
    phases = Ledger(tmp_path / "compute.json").phase_macs()  # reloaded from disk
    assert phases["run"]["train_images"] == 2 * 5 * 6
    assert phases["run"]["train_macs"] == pytest.approx(TRAIN_FACTOR * 60 * per_image)
    with use_ledger(ledger):
        fit(Net(), data, {"epochs": 1, "lr": 0.01})  # no checkpoint: a new entry
    assert ledger.phase_macs()["run"]["train_images"] == 90


def test_evaluate_and_bn_recalibration_charge_forward_passes_per_phase():
    net, data = Net(width=4), batches()
    ledger = Ledger()
    evaluate(net, data)  # no ledger active: nothing counted, nothing fails
    with use_ledger(ledger):
        with ledger.in_phase("search"):
            evaluate(net, data, max_batches=2)
            recalibrate_bn(net, data, batches=3)
        evaluate(net, data)
    per_image = measure_macs(net, (1, 1, 8, 8))
    assert ledger.forward["search"] == {"images": 12 + 18, "macs": pytest.approx(30 * per_image)}
    assert ledger.forward["run"]["images"] == 30
    s = ledger.summary(reference_macs=per_image, train_images=30)
    assert s["phases"]["search"]["reference_epochs"] == pytest.approx(30 / (TRAIN_FACTOR * 30))
    assert s["reference_epochs"] == pytest.approx(60 / (TRAIN_FACTOR * 30))
    assert s["forward_reference_epochs"] == pytest.approx(60 / (TRAIN_FACTOR * 30))  # all of it: no training
    with use_ledger(ledger), ledger.in_phase("evaluate"):
        evaluate(net, data)  # a measurement phase: in the phases, not in the totals
    s = ledger.summary(reference_macs=per_image, train_images=30)
    assert s["phases"]["evaluate"]["forward_macs"] == pytest.approx(30 * per_image)
    assert s["forward_reference_epochs"] == pytest.approx(60 / (TRAIN_FACTOR * 30))


def test_a_corrupt_ledger_is_one_clear_error(tmp_path):
    bad = tmp_path / "compute.json"
    bad.write_text('{"format": "something else"}')
    with pytest.raises(PrunekitError, match="not a prunekit compute ledger"):
        Ledger(bad)
