"""uniform and magnitude pruning to a MACs target, MaskCallback, and the method registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from pydantic import TypeAdapter, ValidationError
from tests.nets import GroupedConv, randomize_bn
from torch.utils.data import DataLoader, TensorDataset

from prunekit import importance
from prunekit.cost.macs import CostModel, measure_macs
from prunekit.errors import PrunekitError
from prunekit.methods import (
    METHODS,
    get_method,
    magnitude,
    method_config_classes,
    method_config_types,
    method_config_union,
    parse_method_config,
    uniform,
)
from prunekit.methods.base import MethodContext
from prunekit.models import create_model
from prunekit.search.fit import min_widths
from prunekit.space import ChannelGroup, ChannelSpace, build_masks, mask, plan_from_ratio
from prunekit.space.widths import legal_width, uniform_widths
from prunekit.train import Callback, fit
from prunekit.train.masking import MaskCallback

SHAPE = (1, 3, 32, 32)
RESNET = "resnet20:width_mult=0.5,num_classes=10"
MOBILENET = "mobilenet_v2:width_mult=0.25,num_classes=10"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")


class Perturb(Callback):
    """Adds ``eps * sum(all parameters)`` to the loss: every weight (BN gamma/beta included) gets a gradient, so a
    pruned weight that is not re-masked becomes non-zero after one step."""

    def extra_loss(self, state, model):
        return 1e-3 * sum(p.sum() for p in model.parameters())


def _loader(n=16, bs=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=bs)


TRAIN_CFG = {"epochs": 1, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2, "no_wd_bn_bias": False}


class Stub:
    """finetune/evaluate of a fake MethodContext: real SGD steps (momentum + weight decay + Perturb) on random data."""

    def __init__(self):
        self.calls: list[dict] = []
        self.evals: list[str] = []
        self.loader = _loader()

    def finetune(self, model, epochs, *, callbacks=(), tag):
        cbs = list(callbacks)
        res = fit(model, self.loader, {**TRAIN_CFG, "epochs": epochs}, callbacks=[Perturb(), *cbs])
        self.calls.append({"tag": tag, "epochs": epochs, "callbacks": cbs, "steps": res.steps})
        for cb in cbs:  # after real optimizer steps the pruned weights are still exactly zero
            if isinstance(cb, MaskCallback):
                for pname, m in cb.masks.params.items():
                    assert torch.count_nonzero(model.get_parameter(pname).detach()[~m]) == 0, pname
                self.calls[-1]["dead"] = _dead_channels(cb.masks)
        return res

    def evaluate(self, model, split):
        self.evals.append(split)
        model.eval()
        with torch.no_grad():
            x, y = next(iter(self.loader))
            return {
                "top1": float((model(x).argmax(1) == y).float().mean()),
                "top5": 1.0,
                "loss": 0.0,
                "n": len(y),
            }


def make_ctx(model_or_spec, frac=0.5, stub=None, shape=SHAPE, target=None):
    torch.manual_seed(0)
    model = create_model(model_or_spec) if isinstance(model_or_spec, str) else model_or_spec
    model.eval()
    space = ChannelSpace.build(model, shape, quiet=True)
    cm = CostModel(space)
    stub = stub or Stub()
    return MethodContext(
        model=model,
        spec=model_or_spec if isinstance(model_or_spec, str) else "custom",
        space=space,
        cost=cm,
        target_macs=target if target is not None else frac * cm.cost().macs,
        data=None,
        device="cpu",
        out_dir=Path("."),
        finetune=stub.finetune,
        evaluate=stub.evaluate,
    )


def _dead_channels(masks) -> dict[str, set[int]]:
    """{conv weight name: set of zeroed output rows} from a MaskSet."""
    out = {}
    for pname, m in masks.params.items():
        if pname.endswith("weight") and m.ndim == 4:
            rows = (~m).flatten(1).all(1)
            out[pname] = set(torch.nonzero(rows).flatten().tolist())
    return out


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), f"ctx.model was modified: {k}"


def _producer_rows(model, group):
    """(weight tensor, positions, roots) of every conv/linear producing the group (non-depthwise)."""
    out = []
    for mem in group.members:
        mod = model.get_submodule(mem.module)
        if (
            mem.dim == "out"
            and isinstance(mod, nn.Conv2d | nn.Linear)
            and not (isinstance(mod, nn.Conv2d) and mod.groups > 1)
        ):
            out.append((mod.weight, list(mem.positions), list(mem.root)))
    return out


def _set_row_l1(model, group, factors):
    """Give every channel ``c`` of ``group`` filters of L1 norm ``factors[c]`` in each producing layer."""
    gen = torch.Generator().manual_seed(group.index)
    with torch.no_grad():
        for w, pos, root in _producer_rows(model, group):
            for p, r in zip(pos, root, strict=True):
                row = torch.randn(w[p].shape, generator=gen)
                w[p] = row / row.abs().sum() * float(factors[r])


# ============================================================================== uniform
@pytest.mark.parametrize("spec", [RESNET, MOBILENET])
def test_uniform_hits_target_with_uniform_widths(spec):
    ctx = make_ctx(spec)
    snap = _snapshot(ctx.model)
    for frac in (0.3, 0.5, 0.7, 0.9):
        ctx.target_macs = frac * ctx.cost.cost().macs
        res = uniform.run(ctx, uniform.Config())
        macs = ctx.cost.cost(res.plan).macs
        assert macs <= ctx.target_macs, (frac, macs)
        assert macs >= 0.97 * ctx.target_macs, (frac, macs / ctx.target_macs)
        assert res.extra["macs"] == macs and not res.trained
        m = res.extra["width_mult"]
        assert 0 < m <= 1
        widths = res.plan.widths(ctx.space)
        for g, w in zip(ctx.space.groups, widths, strict=True):
            assert abs(w - m * g.channels) <= 1.0, (g.name, w, m * g.channels)  # same ratio up to rounding
            if g.name in res.plan.groups:  # importance "first": the first k channels
                assert res.plan.groups[g.name].keep == list(range(w))
    # the applied model really has those MACs (cross-check with torch's flop counter) and ctx.model is untouched
    assert measure_macs(res.model, SHAPE) == ctx.cost.cost(res.plan).macs
    _assert_unchanged(ctx.model, snap)


def test_uniform_rounding_importance_and_limits():
    ctx = make_ctx("resnet20:num_classes=10", 0.5)
    res = uniform.run(ctx, uniform.Config(round_to=4, min_channels=4, importance="l1"))
    m = res.extra["width_mult"]
    assert ctx.cost.cost(res.plan).macs <= ctx.target_macs
    for g in ctx.space.groups:
        w = res.plan.widths(ctx.space)[g.index]
        assert w % 4 == 0 and w >= 4 and abs(w - m * g.channels) <= 4
        if g.name in res.plan.groups:  # top-k by L1
            scores = importance.l1(ctx.model, ctx.space, g)
            keep = res.plan.groups[g.name].keep
            dead = [i for i in range(g.channels) if i not in keep]
            assert scores[keep].min() >= scores[dead].max()
    # target at/above the baseline: nothing pruned
    ctx.target_macs = 2 * ctx.cost.cost().macs
    assert uniform.run(ctx, uniform.Config()).plan.groups == {}
    # impossible target: the message names the smallest reachable MACs
    ctx.target_macs = 1000
    smallest = int(np.rint(ctx.cost.macs(uniform_widths(ctx.space, 0.0, min_channels=4))))
    with pytest.raises(PrunekitError, match=f"smallest model uniform can reach \\({smallest:,} MACs"):
        uniform.run(ctx, uniform.Config(min_channels=4))


def test_legal_width_rounding_and_blocks():
    space = ChannelSpace.build(GroupedConv(), (1, 3, 16, 16), quiet=True)
    g = next(g for g in space.groups if g.blocks > 1)
    assert g.blocks == 4
    for w in np.linspace(0, g.channels, 41):
        lw = legal_width(g, w, round_to=3)
        assert lw % 4 == 0 and 4 <= lw <= g.channels
    plain = ChannelGroup(index=0, name="plain", channels=9, members=[], tags=frozenset())
    assert legal_width(plain, 5.5, round_to=2) == 6
    assert legal_width(plain, 5.5, round_to=2, mode="floor") == 4
    assert legal_width(plain, 4.2, round_to=2, mode="ceil") == 6
    assert legal_width(plain, 0.0, min_channels=3) == 3
    ws = [legal_width(plain, w, round_to=3, min_channels=2) for w in np.linspace(0, 9, 50)]
    assert ws == sorted(ws)  # monotone


# ============================================================================== magnitude, one-shot
@pytest.mark.parametrize("spec", [RESNET, MOBILENET])
@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_magnitude_hits_target(spec, ranking):
    ctx = make_ctx(spec)
    snap = _snapshot(ctx.model)
    for frac in (0.3, 0.6, 0.9):
        ctx.target_macs = frac * ctx.cost.cost().macs
        res = magnitude.run(ctx, magnitude.Config(ranking=ranking))
        macs = ctx.cost.cost(res.plan).macs
        assert macs <= ctx.target_macs
        assert macs >= 0.97 * ctx.target_macs, (frac, macs / ctx.target_macs)
        assert len(res.history) == 1 and res.history[0]["macs"] == macs and "val_top1" in res.history[0]
        res.plan.validate_against(ctx.space)
    _assert_unchanged(ctx.model, snap)


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_magnitude_removes_lowest_l1_within_each_group(ranking):
    ctx = make_ctx(RESNET, 0.5)
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking, round_to=2))
    assert res.plan.groups
    for name, choice in res.plan.groups.items():
        g = ctx.space[name]
        scores = importance.l1(ctx.model, ctx.space, g)
        dead = res.plan.pruned(g)
        assert len(choice.keep) % 2 == 0 or len(choice.keep) == g.channels
        assert scores[choice.keep].min() >= scores[dead].max(), name


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_zeroed_filters_are_pruned_first(ranking):
    model = create_model(RESNET)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    zeroed = {"layer3.1.conv1": [3, 7, 20, 31], "layer2.1.conv1": [0, 9]}
    with torch.no_grad():
        for name, idx in zeroed.items():
            for w, pos, root in _producer_rows(model, space[name]):
                for p, r in zip(pos, root, strict=True):
                    if r in idx:
                        w[p] = 0
    ctx = make_ctx(model, 0.8)
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking))
    for name, idx in zeroed.items():
        dead = set(res.plan.pruned(ctx.space[name]))
        assert dead, name
        # fewer removed than zeroed: only zeroed ones are removed; more removed: every zeroed one is removed
        assert dead <= set(idx) or set(idx) <= dead, (name, dead)
    if ranking == "global":  # zero filters have normalised score 0: globally the first to go
        ctx.target_macs = 0.995 * ctx.cost.cost().macs
        res = magnitude.run(ctx, magnitude.Config(ranking="global"))
        pruned = {n: set(res.plan.pruned(ctx.space[n])) for n in res.plan.groups}
        assert pruned.keys() <= zeroed.keys(), pruned
        assert any(pruned.values())


def test_global_normalisation_is_per_group_and_scale_invariant():
    model = create_model(RESNET)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    gen = torch.Generator().manual_seed(1)
    flat, spread = "layer2.1.conv1", "layer2.2.conv1"  # both 16 channels, same MACs per channel
    for g in space.groups:
        if g.name == flat:  # every channel exactly at the group mean (normalised score 1)
            _set_row_l1(model, g, torch.ones(g.channels))
        else:  # normalised scores spread uniformly over [0.2, 1.8]
            _set_row_l1(
                model, g, torch.linspace(0.2, 1.8, g.channels)[torch.randperm(g.channels, generator=gen)]
            )
    ctx = make_ctx(model, 0.5)
    res = magnitude.run(ctx, magnitude.Config(ranking="global"))
    w = {g.name: int(v) for g, v in zip(ctx.space.groups, res.plan.widths(ctx.space), strict=True)}
    assert w[flat] == 16  # all its channels score 1.0, above the global threshold
    assert w[spread] <= 12  # the same-size group with a spread of scores loses its weak channels
    assert ctx.cost.cost(res.plan).macs <= ctx.target_macs

    # scaling one group's weights (its raw L1) by 100 or 0.01 changes nothing: scores are normalised per group
    for factor in (100.0, 0.01):
        scaled = create_model(RESNET)
        scaled.load_state_dict(model.state_dict())
        with torch.no_grad():
            for wt, pos, _ in _producer_rows(scaled, space[spread]):
                wt[pos] *= factor
        res2 = magnitude.run(make_ctx(scaled, 0.5), magnitude.Config(ranking="global"))
        assert res2.plan.groups == res.plan.groups


@pytest.mark.parametrize("spec", [RESNET, MOBILENET])
def test_global_budget_is_used_up(spec):
    """After the bisection + fill no group can grow by one (rounded) step without exceeding the target."""
    ctx = make_ctx(spec, 0.5)
    for round_to in (1, 4):
        res = magnitude.run(ctx, magnitude.Config(ranking="global", round_to=round_to))
        widths = res.plan.widths(ctx.space)
        assert ctx.cost.macs(widths) <= ctx.target_macs
        for g in ctx.space.groups:
            if widths[g.index] < g.channels:
                up = widths.copy()
                up[g.index] = legal_width(g, widths[g.index] + 1, round_to=round_to, mode="ceil")
                assert np.rint(ctx.cost.macs(up)) > ctx.target_macs, g.name


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_protect_keeps_tagged_groups_whole(ranking):
    ctx = make_ctx(MOBILENET, 0.6)
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking, protect=["residual", "first"]))
    protected = [g for g in ctx.space.groups if g.tags & {"residual", "first"}]
    assert protected
    for g in protected:
        assert g.name not in res.plan.groups
    assert any(g.name in res.plan.groups for g in ctx.space.groups if g not in protected)
    assert sorted(res.extra["protected"]) == sorted(g.name for g in protected)
    assert ctx.target_macs * 0.97 <= ctx.cost.cost(res.plan).macs <= ctx.target_macs


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_impossible_target_names_smallest_macs(ranking):
    ctx = make_ctx(RESNET, 0.5)
    widths = min_widths(ctx.space, min_channels=2)
    smallest = int(np.rint(ctx.cost.macs(widths)))
    ctx.target_macs = smallest - 1
    with pytest.raises(PrunekitError, match=f"smallest model magnitude can reach \\({smallest:,} MACs"):
        magnitude.run(ctx, magnitude.Config(ranking=ranking, min_channels=2))
    ctx.target_macs = smallest  # exactly reachable
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking, min_channels=2))
    assert ctx.cost.cost(res.plan).macs == smallest
    # protecting groups raises the floor
    with pytest.raises(PrunekitError, match="protected"):
        magnitude.run(ctx, magnitude.Config(ranking=ranking, min_channels=2, protect=["residual"]))


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
@pytest.mark.parametrize("spec", [RESNET, MOBILENET])
def test_returned_model_equals_masked_model(spec, ranking):
    model = randomize_bn(create_model(spec), seed=3).eval()
    ctx = make_ctx(model, 0.5)
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking, round_to=2))
    masked, _ = mask(ctx.model, res.plan, ctx.space)
    x = torch.randn(4, 3, 32, 32)
    res.model.eval()
    masked.eval()
    with torch.no_grad():
        torch.testing.assert_close(res.model(x), masked(x), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(ctx.model(x), masked(x), atol=1e-3)  # pruning did change the function
    assert sum(p.numel() for p in res.model.parameters()) < sum(p.numel() for p in ctx.model.parameters())


@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_grouped_conv_groups_stay_balanced(ranking):
    ctx = make_ctx(GroupedConv(), 0.6, shape=(1, 3, 16, 16))
    res = magnitude.run(ctx, magnitude.Config(ranking=ranking))
    res.plan.validate_against(ctx.space)  # balanced blocks
    assert ctx.cost.cost(res.plan).macs <= ctx.target_macs
    assert measure_macs(res.model, (1, 3, 16, 16)) == ctx.cost.cost(res.plan).macs


# ============================================================================== magnitude, iterative
@pytest.mark.parametrize("ranking", ["global", "per_layer"])
def test_iterative_magnitude_keeps_pruned_channels_pruned(ranking, monkeypatch):
    calls = {"n": 0}

    def shuffled(model, space, group):  # fresh random scores on every call: revivals would show up
        calls["n"] += 1
        return torch.rand(
            group.channels, generator=torch.Generator().manual_seed(calls["n"]), dtype=torch.float64
        )

    monkeypatch.setitem(importance.CRITERIA, "shuffled", shuffled)
    stub = Stub()
    ctx = make_ctx(RESNET, 0.4, stub=stub)
    snap = _snapshot(ctx.model)
    cfg = magnitude.Config(ranking=ranking, importance="shuffled", steps=3, step_epochs=1, round_to=2)
    res = magnitude.run(ctx, cfg)

    assert [c["tag"] for c in stub.calls] == ["magnitude-step1", "magnitude-step2"]
    assert all(c["epochs"] == 1 and c["steps"] == 2 for c in stub.calls)
    assert len(res.history) == 3 and [h["step"] for h in res.history] == [1, 2, 3]
    assert set(res.history[0]) == {"step", "macs", "params", "val_top1"}
    macs = [h["macs"] for h in res.history]
    targets = res.extra["step_targets"]
    assert targets[-1] == ctx.target_macs and targets[0] > targets[1] > targets[2]
    assert all(m <= t for m, t in zip(macs, targets, strict=True)) and macs[0] > macs[1] > macs[2]
    assert ctx.target_macs * 0.97 <= ctx.cost.cost(res.plan).macs <= ctx.target_macs
    assert stub.evals == ["val"] * 3

    # every step's pruned channels stay pruned (nested), in the original space, up to the final plan
    dead1, dead2 = stub.calls[0]["dead"], stub.calls[1]["dead"]
    final = build_masks(ctx.model, res.plan, ctx.space)
    dead3 = _dead_channels(final)
    assert any(dead1.values())
    for name in dead1:
        assert dead1[name] <= dead2[name] <= dead3[name], name
    assert sum(map(len, dead2.values())) > sum(map(len, dead1.values()))
    # the finetuned masked model's surviving weights were trained, and the final model is its applied form
    _assert_unchanged(ctx.model, snap)
    x = torch.randn(2, 3, 32, 32)
    res.model.eval()
    ctx.model.eval()
    with torch.no_grad():
        ref, _ = mask(ctx.model, res.plan, ctx.space)
        assert not torch.allclose(res.model(x), ref.eval()(x), atol=1e-4)  # weights changed by finetuning


def test_iterative_without_finetune_epochs_and_target_at_baseline():
    stub = Stub()
    ctx = make_ctx(RESNET, 0.5, stub=stub)
    res = magnitude.run(ctx, magnitude.Config(steps=2, step_epochs=0))
    assert stub.calls == [] and len(res.history) == 2
    assert ctx.cost.cost(res.plan).macs <= ctx.target_macs
    ctx.target_macs = ctx.cost.cost().macs
    res = magnitude.run(ctx, magnitude.Config(steps=3))
    assert res.plan.groups == {} and len(res.history) == 1 and stub.calls == []


def test_history_without_validation_split():
    def no_val(model, split):
        raise PrunekitError("this run has no validation split")

    ctx = make_ctx(RESNET, 0.5)
    ctx.evaluate = no_val
    res = magnitude.run(ctx, magnitude.Config(steps=2, step_epochs=0))
    assert [h["val_top1"] for h in res.history] == [None, None]


def test_step_targets_are_geometric():
    t = magnitude.step_targets(100.0, 12.5, 3)
    assert t == pytest.approx([50.0, 25.0, 12.5])
    assert magnitude.step_targets(100.0, 30.0, 1) == [30.0]


# ============================================================================== MaskCallback
def _masked_setup():
    model = randomize_bn(create_model(RESNET), seed=1)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    plan = plan_from_ratio(space, 0.5, model=model, importance=importance.l1)
    return model, space, plan, build_masks(model, plan, space)


def _dead_entries(model, masks):
    n = 0
    for pname, m in masks.params.items():
        n += int(torch.count_nonzero(model.get_parameter(pname).detach()[~m]))
    for bname, dead in masks.bn_channels.items():
        bn = model.get_submodule(bname)
        n += int(torch.count_nonzero(bn.running_mean[dead])) + int(
            torch.count_nonzero(bn.running_var[dead] - 1)
        )
    return n


class Probe(Callback):
    """Runs after MaskCallback: records pruned entries at train begin and pruned gradients after backward."""

    def __init__(self, masks):
        self.masks, self.at_begin, self.grads = masks, None, []

    def on_train_begin(self, state):
        self.at_begin = _dead_entries(state.model, self.masks)

    def on_after_backward(self, state):
        g = 0.0
        for pname, m in self.masks.params.items():
            grad = state.model.get_parameter(pname).grad
            g += float(grad[~m].abs().sum()) if grad is not None else 0.0
        self.grads.append(g)


def test_mask_callback_keeps_pruned_weights_exactly_zero():
    model, space, plan, masks = _masked_setup()
    bn_names = [n for n in masks.params if ".bn" in n and n.endswith((".weight", ".bias"))]
    assert bn_names  # BN gamma/beta are masked too
    assert _dead_entries(model, masks) > 0  # starts unmasked: on_train_begin must zero them
    before = _snapshot(model)
    probe = Probe(masks)
    fit(model, _loader(), {**TRAIN_CFG, "epochs": 2}, callbacks=[Perturb(), MaskCallback(masks), probe])
    assert probe.at_begin == 0
    assert len(probe.grads) == 4 and max(probe.grads) == 0.0  # gradients of pruned weights are zeroed
    assert _dead_entries(model, masks) == 0
    changed = [
        k
        for k, v in model.state_dict().items()
        if v.dtype.is_floating_point and not torch.equal(v, before[k])
    ]
    assert changed  # the surviving weights did train
    # the control: without the callback the same steps revive pruned weights (so the check above can fail)
    control, _ = mask(model, plan, space)
    assert _dead_entries(control, masks) == 0
    fit(control, _loader(), TRAIN_CFG, callbacks=[Perturb()])
    assert _dead_entries(control, masks) > 0


def test_mask_callback_state_round_trip_and_resume(tmp_path):
    model, space, plan, masks = _masked_setup()
    cb = MaskCallback(masks)
    torch.save(cb.state_dict(), tmp_path / "cb.pt")
    other = MaskCallback()
    other.load_state_dict(torch.load(tmp_path / "cb.pt", weights_only=True))
    assert other.masks.params.keys() == masks.params.keys()
    assert all(torch.equal(other.masks.params[k], masks.params[k]) for k in masks.params)
    assert all(torch.equal(other.masks.bn_channels[k], masks.bn_channels[k]) for k in masks.bn_channels)

    # through fit's checkpoint (loaded with weights_only=True): a resumed run gets the masks back
    ckpt = tmp_path / "fit.pt"
    fit(model, _loader(), TRAIN_CFG, callbacks=[Perturb(), MaskCallback(masks)], ckpt_path=ckpt)
    fresh = MaskCallback()
    fit(model, _loader(), TRAIN_CFG, callbacks=[Perturb(), fresh], ckpt_path=ckpt, resume=True)
    assert fresh.masks.params.keys() == masks.params.keys()
    assert all(torch.equal(fresh.masks.params[k], masks.params[k]) for k in masks.params)

    # set_masks swaps the masks used by the next hook
    tighter = build_masks(model, plan_from_ratio(space, 0.75, model=model, importance=importance.l1), space)
    cb.set_masks(tighter)
    fit(model, _loader(), TRAIN_CFG, callbacks=[Perturb(), cb])
    assert _dead_entries(model, tighter) == 0


# ============================================================================== registry / configs
def test_registry_and_configs():
    assert {"uniform", "magnitude"} <= set(METHODS)
    assert get_method("magnitude") is magnitude and get_method("uniform") is uniform
    assert method_config_classes() == tuple(m.Config for m in METHODS.values())
    assert set(method_config_types().__args__) == set(method_config_classes())
    assert uniform.Config in method_config_classes() and magnitude.Config in method_config_classes()
    adapter = TypeAdapter(method_config_union())
    cfg = adapter.validate_python({"name": "magnitude", "steps": 3, "protect": ["first"]})
    assert isinstance(cfg, magnitude.Config) and cfg.steps == 3
    assert isinstance(adapter.validate_python({"name": "uniform", "round_to": 8}), uniform.Config)
    with pytest.raises(ValidationError):
        adapter.validate_python({"name": "uniform", "ranking": "global"})  # extra="forbid"
    with pytest.raises(PrunekitError, match="unknown method 'slim'"):
        get_method("slim")
    with pytest.raises(
        PrunekitError, match="invalid value for 'magnitude.importance': unknown importance 'l3'"
    ):
        parse_method_config({"name": "magnitude", "importance": "l3"})
    with pytest.raises(PrunekitError, match="unknown group tag"):
        parse_method_config({"name": "magnitude", "protect": ["stem"]})
    with pytest.raises(PrunekitError, match="round_to"):
        parse_method_config({"name": "uniform", "round_to": 0})
    assert parse_method_config({"name": "uniform", "importance": "l1"}).importance == "l1"
