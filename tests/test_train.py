"""Tests for prunekit.train: recipes, schedules, the fit loop, callbacks, checkpoint/resume and DDP.

This file doubles as the DDP worker script: ``python -m torch.distributed.run ... tests/test_train.py OUT``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from prunekit.errors import PrunekitError
from prunekit.io import load_checkpoint
from prunekit.train import (
    Callback,
    TrainConfig,
    build_criterion,
    build_optimizer,
    build_scheduler,
    evaluate,
    fit,
    param_groups,
    parse_train_config,
    progress_enabled,
    total_steps,
)

NUM_CLASSES = 4


# ----------------------------------------------------------------------------------------------- fixtures


class TensorLoader:
    """Minimal loader protocol: (x, y) batches, len(), set_epoch() -> deterministic per-epoch shuffle."""

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True, seed: int = 0
    ):
        self.x, self.y, self.bs, self.shuffle, self.seed, self.epoch = x, y, batch_size, shuffle, seed, 0
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.bs)

    def __iter__(self):
        n = len(self.x)
        if self.shuffle:
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        else:
            idx = torch.arange(n)
        for i in range(0, n, self.bs):
            j = idx[i : i + self.bs]
            yield self.x[j], self.y[j]


def make_data(n: int, seed: int, noise: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable synthetic images: a fixed random prototype per class plus Gaussian noise. (N, 3, 8, 8)."""
    protos = torch.randn(NUM_CLASSES, 3, 8, 8, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(NUM_CLASSES, (n,), generator=g)
    return protos[y] + noise * torch.randn(n, 3, 8, 8, generator=g), y


class TinyCNN(nn.Module):
    def __init__(self, width: int = 8, dropout: float = 0.0):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn(self.conv(x))))
        return self.fc(self.drop(x.flatten(1)))


def loaders(n_train: int = 256, n_val: int = 128, bs: int = 32, seed: int = 0):
    xt, yt = make_data(n_train, seed=seed + 1)
    xv, yv = make_data(n_val, seed=seed + 2)
    return TensorLoader(xt, yt, bs, seed=seed), TensorLoader(xv, yv, 64, shuffle=False)


def new_model(seed: int = 0, **kw) -> TinyCNN:
    torch.manual_seed(seed)
    return TinyCNN(**kw)


def cfg_(**kw) -> TrainConfig:
    base = {"epochs": 2, "lr": 0.05, "weight_decay": 5e-4, "log_every": 4}
    base.update(kw)
    return TrainConfig(**base)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def _no_progress(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")


# ----------------------------------------------------------------------------------------------- config


def test_config_validation_messages():
    with pytest.raises(ValidationError, match="greater than 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValidationError, match="step_size"):
        TrainConfig(epochs=1, schedule="step")
    with pytest.raises(ValidationError, match="milestones"):
        TrainConfig(epochs=1, schedule="multistep")
    with pytest.raises(ValidationError, match="strictly increasing"):
        TrainConfig(epochs=9, schedule="multistep", milestones=[3, 2])
    with pytest.raises(ValidationError, match="warmup_epochs"):
        TrainConfig(epochs=1, warmup_epochs=2)
    with pytest.raises(ValidationError, match="nesterov"):
        TrainConfig(epochs=1, optimizer="adam", nesterov=True)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainConfig(epochs=1, learning_rate=0.1)
    with pytest.raises(PrunekitError) as ei:
        parse_train_config({"epochs": 1, "lr": -1, "schedule": "cosine_annealing"})
    msg = str(ei.value)
    assert "\n" not in msg and "'lr':" in msg and "'schedule':" in msg and "-1" in msg
    assert parse_train_config({"epochs": 0.2}).epochs == 0.2
    assert total_steps(TrainConfig(epochs=0.25), 8) == 2
    assert total_steps(TrainConfig(epochs=0.01), 8) == 1


# ----------------------------------------------------------------------------------------------- schedules


def lr_trace(cfg: TrainConfig, spe: int) -> list[float]:
    """LR used at each optimizer step 0..total (the last entry: after the final step)."""
    model = nn.Linear(1, 1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, spe)
    out = []
    for _ in range(total_steps(cfg, spe) + 1):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine():
    lrs = lr_trace(TrainConfig(epochs=5, lr=2.0, warmup_epochs=1), spe=10)  # 50 steps, 10 warm-up
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(2.0)
    assert lrs[10] == pytest.approx(2.0)  # cosine starts at the peak
    assert lrs[20] == pytest.approx(1.0 + math.cos(math.pi * 0.25))
    assert lrs[30] == pytest.approx(1.0)  # half way through the decay
    assert lrs[50] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    # every param group follows the schedule (no-decay group included)
    model = TinyCNN()
    cfg = TrainConfig(epochs=5, lr=2.0, warmup_epochs=1)
    opt = build_optimizer(model, cfg)
    build_scheduler(opt, cfg, 10)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.2])


def test_step_multistep_exponential_linear_constant():
    lrs = lr_trace(TrainConfig(epochs=6, lr=1.0, schedule="step", step_size=2, gamma=0.1), spe=10)
    assert lrs[19] == pytest.approx(1.0) and lrs[20] == pytest.approx(0.1) and lrs[40] == pytest.approx(0.01)
    lrs = lr_trace(TrainConfig(epochs=5, lr=1.0, schedule="multistep", milestones=[1, 3], gamma=0.5), spe=10)
    assert lrs[9] == 1.0 and lrs[10] == pytest.approx(0.5) and lrs[29] == pytest.approx(0.5)
    assert lrs[30] == pytest.approx(0.25)
    lrs = lr_trace(TrainConfig(epochs=3, lr=1.0, schedule="exponential", exp_decay=0.5), spe=10)
    assert lrs[9] == 1.0 and lrs[15] == pytest.approx(0.5) and lrs[20] == pytest.approx(0.25)
    lrs = lr_trace(
        TrainConfig(epochs=3, lr=1.0, schedule="exponential", exp_decay=0.5, exp_smooth=True), spe=10
    )
    assert lrs[15] == pytest.approx(0.5**1.5)
    lrs = lr_trace(TrainConfig(epochs=2, lr=1.0, schedule="linear"), spe=10)
    assert lrs[0] == 1.0 and lrs[5] == pytest.approx(0.75) and lrs[20] == pytest.approx(0.0)
    lrs = lr_trace(TrainConfig(epochs=2, lr=0.3, schedule="constant", warmup_epochs=0.5), spe=10)
    assert lrs[0] == pytest.approx(0.06) and lrs[5:] == pytest.approx([0.3] * (len(lrs) - 5))


# ----------------------------------------------------------------------------------------------- optimizer


class DWNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, groups=8, bias=True)
        self.ln = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 2)
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)


def _group_names(model: nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {names[id(p)] for p in g["params"]} for g in groups}


def test_param_groups_no_weight_decay_on_norm_and_bias():
    model = DWNet()
    cfg = TrainConfig(epochs=1, weight_decay=1e-3)
    groups = _group_names(model, param_groups(model, cfg))
    assert groups == {
        "decay": {"conv.weight", "dw.weight", "fc.weight"},
        "no_decay": {"bn.weight", "bn.bias", "dw.bias", "ln.weight", "ln.bias", "fc.bias"},
    }
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert [(g["name"], g["weight_decay"]) for g in opt.param_groups] == [("decay", 1e-3), ("no_decay", 0.0)]

    groups = _group_names(model, param_groups(model, cfg.model_copy(update={"no_wd_depthwise": True})))
    assert groups["decay"] == {"conv.weight", "fc.weight"} and "dw.weight" in groups["no_decay"]

    groups = _group_names(model, param_groups(model, cfg.model_copy(update={"no_wd_bn_bias": False})))
    assert list(groups) == ["decay"] and len(groups["decay"]) == 9  # frozen param excluded

    opt = build_optimizer(model, TrainConfig(epochs=1, optimizer="adamw", lr=1e-3, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.05
    with pytest.raises(PrunekitError, match="no trainable parameters"):
        build_optimizer(nn.Linear(2, 2).requires_grad_(False), cfg)


# ----------------------------------------------------------------------------------------------- loss / eval


def test_label_smoothing_loss():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(6, 5, generator=g), torch.randint(5, (6,), generator=g)
    eps = 0.2
    logp = logits.log_softmax(1)
    ce = -logp[torch.arange(6), y].mean()
    uniform = -logp.mean(1).mean()
    smooth = build_criterion(TrainConfig(epochs=1, label_smoothing=eps))(logits, y)
    assert smooth.item() == pytest.approx(((1 - eps) * ce + eps * uniform).item(), rel=1e-6)
    assert build_criterion(TrainConfig(epochs=1))(logits, y).item() == pytest.approx(ce.item(), rel=1e-6)
    # fit really uses it: same init/data, different reported train loss
    tl, _ = loaders(n_train=64)
    losses = []
    for ls in (0.0, 0.3):
        r = fit(new_model(), tl, cfg_(epochs=0.25, label_smoothing=ls, lr=1e-6))
        losses.append(r.history[0]["train_loss"])
    assert abs(losses[0] - losses[1]) > 1e-3


class FixedLogits(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.table[idx]


def test_evaluate_top1_top5_exact():
    table = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5],  # true 0: top-1 hit
            [6.0, 5, 4, 3, 2, 1],  # true 3: rank 4 -> top-5 hit only
            [6.0, 5, 4, 3, 2, 1],  # true 5: last -> miss
            [0.0, 0, 0, 0, 7, 0],  # true 4: top-1 hit
        ]
    )
    y = torch.tensor([0, 3, 5, 4])
    model = FixedLogits(table).train()
    batches = [(torch.tensor([0, 1]), y[:2]), (torch.tensor([2, 3]), y[2:])]
    m = evaluate(model, batches)
    assert m["top1"] == 0.5 and m["top5"] == 0.75 and m["n"] == 4
    assert m["loss"] == pytest.approx(F.cross_entropy(table, y).item(), rel=1e-6)
    assert model.training  # mode restored
    with pytest.raises(PrunekitError, match="no batches"):
        evaluate(model, [])


# ----------------------------------------------------------------------------------------------- fit


def test_tiny_cnn_learns(tmp_path):
    tl, vl = loaders()
    model = new_model()
    before = evaluate(model, vl)["top1"]
    r = fit(
        model, tl, cfg_(epochs=4, lr=0.05, warmup_epochs=0.5), val_loader=vl, log_path=tmp_path / "log.jsonl"
    )
    assert len(r.history) == 4 and r.steps == 4 * len(tl)
    h = r.history
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
    assert h[-1]["val_top1"] > 0.9 > before + 0.3, (before, [e["val_top1"] for e in h])
    assert h[-1]["val_top5"] == 1.0  # 4 classes: top-5 is trivially 1
    assert (
        r.best_top1 == max(e["val_top1"] for e in h)
        and r.history[r.best_epoch - 1]["val_top1"] == r.best_top1
    )
    assert evaluate(model, vl)["top1"] == h[-1]["val_top1"]  # select='last' keeps the final weights
    for key in ("lr", "img_s", "wall_s", "train_s", "train_top1", "val_loss", "epochs_done"):
        assert h[-1][key] is not None and h[-1][key] >= 0
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in recs].count("epoch") == 4
    assert [r["step"] for r in recs if r["type"] == "step"] == list(range(4, 33, 4))


def test_bf16_autocast_trains_in_bfloat16_and_channels_last_trains_the_same_network(tmp_path):
    """``amp: bf16`` runs the forward in bfloat16 (the logits the loss sees are bf16) and still learns; the weights
    stay float32 and end near the float32 run's (bf16 has an 8-bit mantissa: not equal). ``channels_last`` is the
    same arithmetic in another memory layout: the weights agree to float rounding."""
    tl, vl = loaders()

    class Probe(Callback):
        dtypes: list = []

        def on_step_end(self, state):
            self.dtypes.append(state.outputs.dtype)

    runs = {}
    for name, kw in {"fp32": {}, "bf16": {"amp": "bf16"}, "cl": {"channels_last": True}}.items():
        model, probe = new_model(), Probe()
        probe.dtypes = []
        r = fit(model, tl, cfg_(epochs=4, lr=0.05, warmup_epochs=0.5, **kw), val_loader=vl, callbacks=[probe])
        runs[name] = (model, r, set(probe.dtypes))
    assert runs["fp32"][2] == {torch.float32} and runs["bf16"][2] == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in runs["bf16"][0].parameters())
    assert runs["bf16"][1].history[-1]["val_top1"] > 0.85  # it learned (4 classes)
    w32, wbf = (torch.cat([p.detach().flatten() for p in runs[k][0].parameters()]) for k in ("fp32", "bf16"))
    assert 0 < (w32 - wbf).abs().max() < 0.1 * w32.abs().max()
    conv = next(m for m in runs["cl"][0].modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(runs["fp32"][0].parameters(), runs["cl"][0].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


def test_fp16_needs_cuda_and_new_recipe_options_leave_old_config_hashes_alone():
    tl, _ = loaders()
    with pytest.raises(PrunekitError, match="amp: fp16 needs a CUDA device.*bf16"):
        fit(new_model(), tl, cfg_(amp="fp16"))
    # options added later are left out of the dump at their defaults: existing run directories keep their hash
    assert "amp" not in cfg_().model_dump_json() and "channels_last" not in cfg_().model_dump_json()
    assert '"amp":"bf16"' in cfg_(amp="bf16").model_dump_json()


class Counter(Callback):
    """Counts steps; its state must survive a resume."""

    def __init__(self):
        self.steps, self.epochs_seen = 0, []

    def on_epoch_begin(self, state):
        self.epochs_seen.append(state.epoch)

    def on_step_end(self, state):
        self.steps += 1

    def state_dict(self):
        return {"steps": self.steps, "epochs_seen": list(self.epochs_seen)}

    def load_state_dict(self, state):
        self.steps, self.epochs_seen = state["steps"], list(state["epochs_seen"])


class Killer(Callback):
    """Simulates a kill at the start of epoch ``at`` (after the previous epoch's checkpoint was written)."""

    def __init__(self, at: int | None):
        self.at = at

    def on_epoch_begin(self, state):
        if state.epoch == self.at:
            raise KeyboardInterrupt


def test_fractional_epochs_and_jsonl(tmp_path):
    tl, _ = loaders()  # 8 batches / epoch
    c = Counter()
    r = fit(new_model(), tl, cfg_(epochs=1.5, log_every=4), callbacks=[c], log_path=tmp_path / "l.jsonl")
    assert c.steps == 12 == r.steps and c.epochs_seen == [0, 1] and tl.epochs_set == [0, 1]
    assert [e["epochs_done"] for e in r.history] == [1.0, 1.5]
    recs = [json.loads(line) for line in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert [(x["type"], x["step"]) for x in recs] == [
        ("step", 4),
        ("step", 8),
        ("epoch", 8),
        ("step", 12),
        ("epoch", 12),
    ]
    assert all(x["desc"] == "train" for x in recs)


def _resume_cfg() -> TrainConfig:
    return cfg_(epochs=3, lr=0.05, warmup_epochs=0.5, seed=7, momentum=0.9)


def test_resume_after_kill_is_bit_identical(tmp_path):
    tl, vl = loaders()
    # uninterrupted reference (dropout makes the result depend on the RNG stream too)
    ref_model, ref_counter = new_model(dropout=0.3), Counter()
    ref = fit(ref_model, tl, _resume_cfg(), val_loader=vl, callbacks=[ref_counter, Killer(None)])

    ckpt = tmp_path / "run" / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(
            new_model(dropout=0.3),
            tl,
            _resume_cfg(),
            val_loader=vl,
            callbacks=[Counter(), Killer(2)],
            ckpt_path=ckpt,
        )
    saved = load_checkpoint(ckpt)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    assert not list(ckpt.parent.glob("*.tmp"))  # atomic: no leftovers

    model, counter = new_model(seed=99, dropout=0.3), Counter()  # different init: must be overwritten
    res = fit(
        model,
        tl,
        _resume_cfg(),
        val_loader=vl,
        callbacks=[counter, Killer(None)],
        ckpt_path=ckpt,
        resume=True,
    )
    assert res.epochs_run == 1 and res.steps == ref.steps == 24
    assert states_equal(model.state_dict(), ref_model.state_dict())
    assert counter.steps == ref_counter.steps == 24 and counter.epochs_seen == [0, 1, 2]
    timing = {"img_s", "train_s", "wall_s"}
    strip = [{k: v for k, v in e.items() if k not in timing} for e in res.history]
    assert strip == [{k: v for k, v in e.items() if k not in timing} for e in ref.history]

    # a complete checkpoint: resume returns at once with the same weights
    again = fit(
        model,
        tl,
        _resume_cfg(),
        callbacks=[Counter(), Killer(None)],
        val_loader=vl,
        ckpt_path=ckpt,
        resume=True,
    )
    assert again.epochs_run == 0 and len(again.history) == 3
    assert states_equal(model.state_dict(), ref_model.state_dict())


def test_resume_without_rng_restore_would_differ(tmp_path):
    """Guard: the bit-identical resume test is sensitive (dropout RNG) - a reseeded resume diverges."""
    tl, _ = loaders()
    ref = new_model(dropout=0.3)
    fit(ref, tl, _resume_cfg())
    ckpt = tmp_path / "c.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(new_model(dropout=0.3), tl, _resume_cfg(), callbacks=[Killer(2)], ckpt_path=ckpt)
    state = load_checkpoint(ckpt)
    state["rng"] = []  # drop RNG state -> fit reseeds (and warns)
    torch.save(state, ckpt)
    model = new_model(dropout=0.3)
    with pytest.warns(UserWarning, match="RNG") as rec:
        fit(model, tl, _resume_cfg(), callbacks=[Killer(None)], ckpt_path=ckpt, resume=True)
    assert not states_equal(model.state_dict(), ref.state_dict())
    # the warning points at fit's caller, not at fit's helpers
    assert [w.filename for w in rec if "RNG" in str(w.message)] == [__file__]


def test_resume_errors(tmp_path):
    tl, _ = loaders(n_train=64)
    ckpt = tmp_path / "c.pt"
    fit(new_model(), tl, cfg_(epochs=1), ckpt_path=ckpt)
    # different model shape
    with pytest.raises(PrunekitError) as ei:
        fit(new_model(width=16), tl, cfg_(epochs=2), ckpt_path=ckpt, resume=True)
    msg = str(ei.value)
    assert "different model" in msg and "conv.weight" in msg and "\n" not in msg
    # different callbacks
    with pytest.raises(PrunekitError, match="callbacks"):
        fit(new_model(), tl, cfg_(epochs=2), ckpt_path=ckpt, resume=True, callbacks=[Counter()])
    # different optimizer
    with pytest.raises(PrunekitError, match="optimizer"):
        fit(new_model(), tl, cfg_(epochs=2, optimizer="adam", lr=1e-3), ckpt_path=ckpt, resume=True)
    # truncated (corrupt) checkpoint
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunekitError) as ei:
        fit(new_model(), tl, cfg_(epochs=2), ckpt_path=ckpt, resume=True)
    assert "corrupt" in str(ei.value) and "\n" not in str(ei.value)
    # a valid torch file that is not a training checkpoint
    torch.save({"weights": torch.ones(2)}, ckpt)
    with pytest.raises(PrunekitError, match="not a prunekit training checkpoint"):
        fit(new_model(), tl, cfg_(epochs=2), ckpt_path=ckpt, resume=True)
    with pytest.raises(PrunekitError, match="not found"):
        fit(new_model(), tl, cfg_(epochs=2), ckpt_path=tmp_path / "missing.pt", resume=True)
    with pytest.raises(PrunekitError, match="ckpt"):
        fit(new_model(), tl, cfg_(epochs=2), resume=True)


def test_fit_argument_errors():
    tl, _ = loaders(n_train=64)
    with pytest.raises(PrunekitError, match="val_loader"):
        fit(new_model(), tl, cfg_(), select="best")
    with pytest.raises(PrunekitError, match="select"):
        fit(new_model(), tl, cfg_(), select="first")
    with pytest.raises(PrunekitError, match="empty"):
        fit(new_model(), TensorLoader(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), 8), cfg_())
    with pytest.raises(PrunekitError, match="no len"):
        fit(new_model(), iter([]), cfg_())
    with pytest.raises(PrunekitError, match="invalid train config"):
        fit(new_model(), tl, {"epochs": -1})
    with pytest.raises(PrunekitError, match="diverged"):
        fit(new_model(), tl, cfg_(epochs=1), loss_fn=lambda out, y: out.sum() * float("nan"))


# ----------------------------------------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self):
        self.calls: list[str] = []
        self.targets_replaced = True

    def on_train_begin(self, state):
        self.calls.append("on_train_begin")

    def on_epoch_begin(self, state):
        self.calls.append("on_epoch_begin")

    def on_batch_begin(self, state, batch):
        self.calls.append("on_batch_begin")
        x, y = batch
        return x, torch.zeros_like(y)  # replacement batch: every label becomes class 0

    def extra_loss(self, state, model):
        self.calls.append("extra_loss")
        self.targets_replaced &= bool((state.targets == 0).all()) and state.outputs is not None
        return None

    def on_after_backward(self, state):
        self.calls.append("on_after_backward")

    def on_step_end(self, state):
        self.calls.append("on_step_end")

    def on_epoch_end(self, state, metrics):
        self.calls.append("on_epoch_end")
        metrics["recorder_calls"] = len(self.calls)

    def on_train_end(self, state):
        self.calls.append("on_train_end")


def test_hook_order_and_batch_replacement():
    tl, vl = loaders(n_train=64, bs=32)  # 2 steps / epoch
    rec = Recorder()
    r = fit(new_model(), tl, cfg_(epochs=1), callbacks=[rec], val_loader=vl)
    step = ["on_batch_begin", "extra_loss", "on_after_backward", "on_step_end"]
    assert rec.calls == ["on_train_begin", "on_epoch_begin", *step, *step, "on_epoch_end", "on_train_end"]
    assert rec.targets_replaced
    assert r.history[0]["recorder_calls"] == 11  # callbacks can add metrics


class ZeroSlice(Callback):
    """Re-applies a 'mask' after each step: output row 0 of fc stays zero."""

    def on_step_end(self, state):
        with torch.no_grad():
            state.model.fc.weight[0].zero_()
            state.model.fc.bias[0].zero_()


class FreezeFilter(Callback):
    """Masks the gradient of conv filter 0 (with no weight decay it must not move)."""

    def on_after_backward(self, state):
        state.model.conv.weight.grad[0].zero_()


class L2Penalty(Callback):
    def __init__(self, coef: float):
        self.coef = coef

    def extra_loss(self, state, model):
        return self.coef * model.fc.weight.pow(2).sum()


def test_on_step_end_and_after_backward_take_effect():
    tl, _ = loaders(n_train=128)
    model = new_model()
    fit(model, tl, cfg_(epochs=2), callbacks=[ZeroSlice()])
    assert torch.count_nonzero(model.fc.weight[0]) == 0 and model.fc.bias[0] == 0
    assert torch.count_nonzero(model.fc.weight[1:]) == model.fc.weight[1:].numel()
    control = new_model()
    fit(control, tl, cfg_(epochs=2))
    assert torch.count_nonzero(control.fc.weight[0]) > 0  # without the hook the row moves

    model = new_model()
    init = model.conv.weight.detach().clone()
    fit(model, tl, cfg_(epochs=2, weight_decay=0.0), callbacks=[FreezeFilter()])
    assert torch.equal(model.conv.weight[0], init[0]) and not torch.equal(model.conv.weight[1], init[1])


def test_extra_loss_takes_effect():
    tl, _ = loaders(n_train=128)
    plain, reg = new_model(), new_model()
    r0 = fit(plain, tl, cfg_(epochs=2, weight_decay=0.0))
    r1 = fit(reg, tl, cfg_(epochs=2, weight_decay=0.0), callbacks=[L2Penalty(0.5)])
    assert r0.history[-1]["train_extra"] == 0.0 and r1.history[-1]["train_extra"] > 0.0
    assert reg.fc.weight.norm() < 0.5 * plain.fc.weight.norm()


class Sabotage(Callback):
    """Destroys the model during the last epoch: select='best' must bring back the best weights."""

    def on_step_end(self, state):
        if state.epoch == state.num_epochs - 1:
            with torch.no_grad():
                for p in state.model.parameters():
                    p.zero_()


class StopAfter(Callback):
    def __init__(self, n: int):
        self.n = n

    def on_epoch_end(self, state, metrics):
        state.stop_training = len(state.history) + 1 >= self.n


def test_select_best_and_early_stop(tmp_path):
    tl, vl = loaders()
    model = new_model()
    r = fit(model, tl, cfg_(epochs=3), val_loader=vl, callbacks=[Sabotage()], select="best")
    assert r.history[-1]["val_top1"] < 0.5 < r.best_top1 and r.best_epoch == 2
    assert evaluate(model, vl)["top1"] == r.best_top1
    assert r.best_state is not None and states_equal(r.best_state, model.state_dict())
    last = new_model()
    fit(last, tl, cfg_(epochs=3), val_loader=vl, callbacks=[Sabotage()], select="last")
    assert evaluate(last, vl)["top1"] < 0.5

    ckpt = tmp_path / "c.pt"
    r = fit(new_model(), tl, cfg_(epochs=5), callbacks=[StopAfter(2)], ckpt_path=ckpt)
    assert r.stopped_early and len(r.history) == 2
    r = fit(new_model(), tl, cfg_(epochs=5), callbacks=[StopAfter(2)], ckpt_path=ckpt, resume=True)
    assert r.epochs_run == 0 and len(r.history) == 2  # an early-stopped run stays stopped


def test_progress_env(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    assert progress_enabled() is False
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "0")
    assert progress_enabled() is sys.stderr.isatty()


# ----------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(out: Path) -> None:
    """Run by torchrun: each rank trains on its own shard; DDP must keep the ranks identical."""
    from prunekit.train import cleanup, init_from_env, is_main

    info = init_from_env(device="cpu")
    try:
        assert info.backend == "gloo" and info.world_size == 2
        torch.set_num_threads(1)
        model = new_model(seed=100 + info.rank)  # different init per rank: DDP broadcasts rank 0's
        xt, yt = make_data(256, seed=1)
        xv, yv = make_data(64, seed=2)
        r, w = info.rank, info.world_size
        tl = TensorLoader(xt[r::w], yt[r::w], 16, seed=5)
        vl = TensorLoader(xv[r::w], yv[r::w], 16, shuffle=False)
        res = fit(
            model,
            tl,
            cfg_(epochs=2, log_every=4),
            val_loader=vl,
            ckpt_path=out / "ckpt.pt",
            log_path=out / "log.jsonl",
            callbacks=[Counter()],
        )
        torch.save(model.state_dict(), out / f"rank{r}.pt")
        (out / f"hist{r}.json").write_text(json.dumps({"history": res.history, "main": is_main()}))
    finally:
        cleanup()


def test_ddp_two_ranks_identical(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PRUNEKIT_NO_PROGRESS="1", MASTER_ADDR="127.0.0.1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    if sys.platform.startswith("linux"):
        env.setdefault(
            "GLOO_SOCKET_IFNAME", "lo"
        )  # both ranks are local: don't depend on hostname resolution
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        __file__,
        str(tmp_path),
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    s0, s1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert states_equal(s0, s1)
    assert not states_equal(s0, new_model(seed=100).state_dict())  # it trained
    h0, h1 = (json.loads((tmp_path / f"hist{r}.json").read_text()) for r in (0, 1))
    assert h0["main"] and not h1["main"]
    timing = {"img_s", "train_s", "wall_s"}
    strip = [[{k: v for k, v in e.items() if k not in timing} for e in h["history"]] for h in (h0, h1)]
    assert strip[0] == strip[1]  # all-reduced metrics
    assert h0["history"][-1]["val_n"] == 64 and h0["history"][-1]["step"] == 2 * 8
    recs = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["type"] for r in recs].count("epoch") == 2  # only rank 0 logs
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    assert states_equal(ck["model"], s0) and len(ck["rng"]) == 2 and ck["world_size"] == 2


if __name__ == "__main__":
    _ddp_worker(Path(sys.argv[1]))
