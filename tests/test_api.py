"""prunekit from Python (issue #18): prune / save / restore, the user's own loss and score, models with several
inputs or dict outputs, and the fit loop's batch_loss / eval_fn."""

from __future__ import annotations

import statistics

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit.checks import run_checks
from prunekit.cost.macs import CostModel, measure_macs
from prunekit.errors import PrunekitError
from prunekit.models import create_model
from prunekit.space import ChannelSpace
from prunekit.train import fit


class TinyNet(nn.Module):
    """A torchvision-style CNN (features / avgpool / classifier), not a prunekit builtin."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class DictNet(TinyNet):
    """Returns a dict: logits and a per-pixel map (segmentation-style), both protected from pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.seg = nn.Conv2d(64, 2, 1)

    def forward(self, x):
        f = self.features(x)
        return {"out": self.classifier(torch.flatten(self.avgpool(f), 1)), "mask": self.seg(f)}


class TwoInputs(nn.Module):
    """``forward(image, extra)``: two tensors, as a detector with an auxiliary input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyNet(classes=8).features
        self.head = nn.Linear(64 + 5, 3)

    def forward(self, image, extra):
        f = self.body(image).mean(dim=(2, 3))
        return self.head(torch.cat([f, extra], dim=1))


def _loaders(n=96, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x[torch.arange(n), y % 3] += 1.5  # learnable: the class brightens one colour channel
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16, shuffle=True, generator=g), DataLoader(ds, batch_size=32)


def test_prune_magnitude_needs_only_a_model_and_an_example_and_restores_bit_identically(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    pruned, plan = prunekit.prune(model, torch.randn(1, 3, 32, 32), "magnitude", {"macs_ratio": 0.5})
    base = measure_macs(model, (1, 3, 32, 32))
    assert measure_macs(pruned, (1, 3, 32, 32)) <= 0.5 * base * 1.001
    assert plan.groups and any(plan.pruned(g) for g in ChannelSpace.build(model, (1, 3, 32, 32)))
    path = prunekit.save(tmp_path / "p.safetensors", pruned, plan)
    x = torch.randn(4, 3, 32, 32)
    for how in ("resnet20", lambda: create_model("resnet20"), create_model("resnet20")):
        again = prunekit.restore(path, how)  # a freshly built original architecture each time
        with torch.no_grad():
            assert torch.equal(again(x), pruned.eval()(x))
    with pytest.raises(PrunekitError, match="not a prunekit.save file"):
        from prunekit.io import save_safetensors

        save_safetensors(model.state_dict(), tmp_path / "plain.safetensors")
        prunekit.restore(tmp_path / "plain.safetensors", "resnet20")
    with pytest.raises(PrunekitError, match="do not fit"):
        prunekit.restore(path, "resnet56")


def test_prune_to_a_latency_ratio_on_a_torchvision_style_model_meets_it_when_measured():
    from prunekit.cost.latency import interleaved_ort_latency

    torch.manual_seed(0)
    model = TinyNet().eval()
    example = torch.randn(1, 3, 48, 48)
    pruned, plan = prunekit.prune(model, example, "uniform", {"latency_ratio": 0.6}, round_to=16)
    base_t, pruned_t = interleaved_ort_latency([(model, (1, 3, 48, 48)), (pruned, (1, 3, 48, 48))], rounds=5)
    ratio = statistics.median(pruned_t[1]) / statistics.median(base_t[1])
    assert plan.meta["method"] == "uniform" and sum(p.numel() for p in pruned.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    assert ratio <= 0.6 * 1.25, (
        ratio
    )  # re-measured here, beside the method's own measurement (noise allowance)


def test_a_custom_loss_is_used_and_changes_what_gets_pruned():
    train, val = _loaders()
    calls = []

    def ce(model, batch):
        x, y = batch
        calls.append(1)
        return nn.functional.cross_entropy(model(x), y)

    def ignoring_class_0(model, batch):
        x, y = batch
        keep = y != 0
        return nn.functional.cross_entropy(model(x[keep]), y[keep]) if keep.any() else model(x).sum() * 0

    stage = {"epochs": 2, "lr": 0.1}
    plans = []
    for loss in (ce, ignoring_class_0):
        torch.manual_seed(0)
        _, plan = prunekit.prune(
            TinyNet().eval(),
            torch.randn(1, 3, 16, 16),
            "multistage",
            train_loader=train,
            val_loader=val,
            loss_fn=loss,
            schedule=[0.5],
            stage=stage,
            ramp_epochs=1,  # the channels are ranked while the stage trains: on weights the loss shaped
            prune_every=2,
            latency=False,
        )
        plans.append(plan)
    assert calls, "the custom loss was never called"
    keeps = [p.model_dump()["groups"] for p in plans]
    assert keeps[0] != keeps[1]  # the same model, data and seed: only the loss differs


def test_eval_fn_picks_the_best_epoch_and_fit_takes_whole_batches():
    train, val = _loaders()
    torch.manual_seed(0)
    model = TinyNet()
    scores = iter([0.1, 0.9, 0.2])
    res = fit(
        model,
        train,
        {"epochs": 3, "lr": 0.05},
        val_loader=val,
        select="best",
        batch_loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
        eval_fn=lambda m, loader: next(scores),
    )
    assert [h["val_score"] for h in res.history] == [0.1, 0.9, 0.2]
    assert res.best_epoch == 2 and res.history[0]["train_top1"] is None
    with pytest.raises(PrunekitError, match="scalar tensor"):
        fit(TinyNet(), train, {"epochs": 1, "lr": 0.05}, batch_loss=lambda m, b: m(b[0]))


def test_a_dict_output_model_passes_check_leaf_by_leaf():
    results, facts = run_checks(DictNet().eval(), (1, 3, 32, 32), 0.5, onnx=False)
    assert all(r.ok for r in results), [(r.name, r.detail) for r in results if not r.ok]
    assert facts["channels_pruned"] > 0
    assert facts["pruned_output_shape"] == facts["output_shape"] == [[2, 4], [2, 2, 16, 16]]
    train, val = _loaders()
    seen = []

    def pick(out):
        seen.append(sorted(out))
        return out["out"]

    pruned, plan = prunekit.prune(
        DictNet().eval(),
        torch.randn(1, 3, 32, 32),
        "magnitude",
        {"params_ratio": 0.6},
        train_loader=train,
        val_loader=val,
        output_transform=pick,  # the tensor the default cross-entropy and top-1 use
        finetune={"epochs": 1, "lr": 0.05},
    )
    assert seen and seen[0] == ["mask", "out"]
    out = pruned(torch.randn(2, 3, 16, 16))
    assert set(out) == {"out", "mask"} and out["mask"].shape == (2, 2, 8, 8)  # outputs never pruned


def test_a_model_with_two_inputs_prunes_and_restores_from_example_tuples(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    example = (torch.randn(1, 3, 16, 16), torch.randn(1, 5))
    space = ChannelSpace.build(model, example)
    assert space.input_shape == (1, 3, 16, 16) and len(space) > 0
    pruned, plan = prunekit.prune(model, example, "magnitude", {"macs_ratio": 0.5})
    assert CostModel(space).cost(plan).macs <= 0.5 * CostModel(space).cost().macs * 1.001
    x = (torch.randn(3, 3, 16, 16), torch.randn(3, 5))
    again = prunekit.restore(prunekit.save(tmp_path / "two.safetensors", pruned, plan), TwoInputs, example)
    with torch.no_grad():
        assert torch.equal(again(*x), pruned(*x)) and pruned(*x).shape == (3, 3)
    with pytest.raises(PrunekitError, match="one tensor input"):
        prunekit.prune(model, example, "uniform", {"latency_ratio": 0.5})


def test_bad_calls_are_one_line_errors():
    model = TinyNet().eval()
    ex = torch.randn(1, 3, 16, 16)
    with pytest.raises(PrunekitError, match="unknown method|method"):
        prunekit.prune(model, ex, "no-such-method", {"macs_ratio": 0.5})
    with pytest.raises(PrunekitError, match="target"):
        prunekit.prune(model, ex, "magnitude", {"macs_ratio": 2.0})
    with pytest.raises(PrunekitError, match="train_loader"):
        prunekit.prune(model, ex, "multistage", schedule=[0.5], ramp_epochs=0, stage={"epochs": 1, "lr": 0.1})


def test_the_readme_example_is_examples_segmentation_and_runs(tmp_path):
    """The README's "Use it from Python" block is examples/segmentation.py verbatim, and every script in examples/
    runs to the end (in a temporary directory: they write their outputs to the working directory)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme.split("## Use it from Python", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert block == (root / "examples" / "segmentation.py").read_text()
    scripts = sorted((root / "examples").glob("*.py"))
    assert scripts
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PRUNEKIT_NO_PROGRESS": "1", "PYTHONPATH": str(root / "src")}
    for script in scripts:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{script.name}: {proc.stderr[-2000:]}"
    assert "IoU" in proc.stdout and (tmp_path / "segnet-pruned.safetensors").is_file()


def test_metapruning_scores_its_candidates_with_the_users_eval_fn():
    train, val = _loaders()
    scored = []

    def score(model, loader):
        scored.append(1)
        return -sum(float(nn.functional.cross_entropy(model(x), y)) for x, y in loader)

    torch.manual_seed(0)
    pruned, plan = prunekit.prune(
        TinyNet().eval(),
        torch.randn(1, 3, 16, 16),
        "metapruning",
        {"macs_ratio": 0.5},
        train_loader=train,
        val_loader=val,
        eval_fn=score,
        pruningnet_train={"epochs": 1, "lr": 0.05},
        final_train={"epochs": 1, "lr": 0.05},
        search={"population": 4, "iterations": 1, "parents": 2, "mutations": 2, "crossovers": 2},
        recal_batches=2,
    )
    assert len(scored) >= 4, len(scored)  # the GA's 4+ candidates were scored by it (and the best epochs)
    space = ChannelSpace.build(TinyNet(), (1, 3, 16, 16))
    assert CostModel(space).cost(plan).macs <= 0.5 * CostModel(space).cost().macs * 1.001
