"""MetaPruning: PruningNet generators / cropping / export equivalence, BN recalibration, the GA (MACs window, resume),
the encoding, and a tiny end-to-end CLI run on real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.nets import (
    DenseConcat,
    DepthwiseChain,
    FlattenLinear,
    GroupedConv,
    RandomNet,
    ResidualProj,
    randomize_bn,
)

from prunekit.cli import main
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods import metapruning as mp
from prunekit.models import create_model
from prunekit.search.base import run_search
from prunekit.search.evolution import EvolutionConfig, GeneBounds, GeneticSearch
from prunekit.space import ChannelSpace, Plan, plan_from_widths
from prunekit.supernets.pruningnet import PruningNet, block_of
from prunekit.train import TrainConfig
from prunekit.train.bn import recalibrate_bn

SHAPE = (1, 3, 16, 16)
NETS = [ResidualProj, DepthwiseChain, DenseConcat, GroupedConv, FlattenLinear]
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
needs_fmnist = pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")


def build(model: nn.Module, shape=SHAPE, **kw) -> tuple[PruningNet, ChannelSpace]:
    space = ChannelSpace.build(model, shape)
    torch.manual_seed(1)
    return PruningNet(model, space, **kw), space


def random_widths(space: ChannelSpace, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.integers(1, g.channels + 1) for g in space.groups], dtype=np.int64)


def perturb_generators(pn: PruningNet, seed: int = 0) -> None:
    """Give every generator a non-zero encoding-dependent part (fresh generators ignore the encoding)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in pn.named_parameters():
            if name.endswith("generator.fc2.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def batches(n: int, shape=SHAPE, seed: int = 0, bs: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(bs, *shape[1:], generator=gen), torch.zeros(bs, dtype=torch.long)) for _ in range(n)]


def assert_equivalent(pn: PruningNet, widths: np.ndarray, shape=SHAPE) -> None:
    """Train-mode step (BN stats move), recalibrate, then the PruningNet and its export must agree in eval mode."""
    pn.set_widths(widths)
    pn.train()
    pn(batches(1, shape, seed=5)[0][0])
    recalibrate_bn(pn, batches(3, shape), batches=3)
    pn.eval()
    x = batches(1, shape, seed=9)[0][0]
    with torch.no_grad():
        y_pn = pn(x)
        sub, plan = pn.subnet()
        y_sub = sub(x)
    assert plan.widths(pn.space).tolist() == pn.widths.tolist()
    plain = np.array([g.blocks == 1 for g in pn.space], dtype=bool)
    assert pn.widths[plain].tolist() == widths[plain].tolist()  # grouped-conv groups: a multiple of blocks
    assert y_pn.shape == y_sub.shape
    assert torch.allclose(y_pn, y_sub, atol=1e-5 * (1 + y_sub.abs().max().item())), (y_pn - y_sub).abs().max()


# ---------------------------------------------------------------------------------------------- PruningNet
@pytest.mark.parametrize("net", NETS)
def test_generator_shapes_and_crops_equal_the_sliced_layers(net):
    torch.manual_seed(0)
    model = net()
    pn, space = build(model)
    perturb_generators(pn)
    assert pn.layer_names and set(pn.layer_names) == {
        n for n, s in space.layers.items() if s.kind in ("conv", "linear")
    }
    w = random_widths(space, 3)
    pn.set_widths(w)
    sub, _ = pn.subnet()
    for name in pn.layer_names:
        ref = model.get_submodule(name).weight
        assert pn.generated(name).shape == ref.shape  # the generator produces the maximum shape
        cropped = pn.cropped(name)
        sliced = sub.get_submodule(name).weight  # what apply() keeps of the full generated weight
        assert cropped.shape == sliced.shape, name
        assert torch.equal(cropped, sliced), name


def test_every_layer_kind_is_covered():
    """Across NETS the generators cover plain, depthwise, grouped convs, concat consumers, flatten-linears."""
    seen = set()
    for net in NETS:
        pn, space = build(net())
        for name in pn.layer_names:
            s = space.layers[name]
            if s.kind == "linear":
                seen.add("flatten-linear" if pn._dims[(name, "in")].parts and s.in_size > 16 else "linear")
            elif s.depthwise:
                seen.add("depthwise")
            elif s.conv_groups > 1:
                seen.add("grouped")
            else:
                seen.add("conv")
    assert {"conv", "depthwise", "grouped", "linear", "flatten-linear"} <= seen


def test_cropping_is_the_leading_slice_for_first_k():
    pn, space = build(ResidualProj())
    perturb_generators(pn)
    w = space.channels.copy()
    w[space["stem"].index] = 5
    w[space["b1c1"].index] = 3
    pn.set_widths(w)
    full = pn.generated("b1c1")
    assert torch.equal(pn.cropped("b1c1"), full[:3, :5])
    assert torch.equal(pn.cropped("b1c2"), pn.generated("b1c2")[:5, :3])
    # the encoding reaches the generator: other widths give another weight for the same layer
    pn.set_widths(space.channels)
    assert not torch.equal(pn.generated("b1c1"), full)


@pytest.mark.parametrize("net", NETS)
def test_pruningnet_equals_exported_subnet(net):
    torch.manual_seed(0)
    pn, space = build(randomize_bn(net()), bn_affine=True)
    perturb_generators(pn)
    for seed in range(3):
        assert_equivalent(pn, random_widths(space, seed))
    assert_equivalent(pn, space.channels.copy())
    assert_equivalent(pn, np.ones(len(space), dtype=np.int64))


@pytest.mark.parametrize(
    "spec",
    ["resnet20:width_mult=0.25,num_classes=4", "mobilenet_v2:width_mult=0.25,num_classes=4,stem_stride=1"],
)
def test_pruningnet_equals_exported_subnet_reference_models(spec):
    torch.manual_seed(0)
    pn, space = build(create_model(spec))
    perturb_generators(pn)
    assert_equivalent(pn, random_widths(space, 1))
    plain_bn = [m for m in pn.subnet()[0].modules() if isinstance(m, nn.BatchNorm2d)]
    assert plain_bn and all(
        torch.equal(m.weight, torch.ones_like(m.weight)) for m in plain_bn
    )  # affine=False


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    blocks=st.lists(
        st.tuples(
            st.sampled_from(["conv", "residual", "inverted", "concat", "grouped"]),
            st.sampled_from([4, 6, 8]),
            st.sampled_from([1, 2]),
            st.sampled_from([2]),
        ),
        min_size=1,
        max_size=4,
    ),
    flatten=st.booleans(),
    seed=st.integers(0, 100),
)
def test_random_architectures_pruningnet_equals_subnet(blocks, flatten, seed):
    torch.manual_seed(seed)
    pn, space = build(RandomNet(blocks, flatten=flatten))
    perturb_generators(pn, seed)
    assert_equivalent(pn, random_widths(space, seed))


def test_generator_inputs_follow_the_block():
    model = create_model("mobilenet_v2:width_mult=0.25,num_classes=4")
    pn, space = build(model)
    assert block_of(model, "features.3.conv.0.0") == "features.3"
    assert block_of(model, "features.0.0") is None
    mid = pn.block_groups("features.3.conv.1.0")
    names = [space.groups[g].name for g in mid]
    assert names == [
        "features.2.conv.2",
        "features.3.conv.0.0",
    ]  # [in/out stage group, mid]: residual shares in/out
    assert pn.net.get_submodule("features.3.conv.0.0").generator.fc1.in_features == 4
    assert pn.net.get_submodule("features.0.0").generator.fc1.in_features == 2  # stem: own [out, in]
    layer, _ = build(model, inputs="layer")
    assert all(layer.net.get_submodule(n).generator.fc1.in_features == 2 for n in layer.layer_names)


def test_bad_encodings_and_hard_coded_forward_are_refused():
    pn, space = build(ResidualProj())
    with pytest.raises(PrunekitError, match="groups"):
        pn.set_widths([1, 2])
    w = space.channels.copy()
    w[0] = 0
    with pytest.raises(PrunekitError, match="outside"):
        pn.set_widths(w)

    class HardCoded(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool2d(self.c(x), 1).view(-1, 8))

    with pytest.raises(PrunekitError, match="hard-coded"):
        build(HardCoded())


# ---------------------------------------------------------------------------------------------- BN recalibration
def test_recalibration_is_the_mean_of_batch_statistics_and_restores_modes():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.5))
    model.train()
    data = batches(4, seed=2)
    n = recalibrate_bn(model, data, batches=3)
    assert n == 3
    bn = model[1]
    with torch.no_grad():
        means = torch.stack([model[0](x).mean((0, 2, 3)) for x, _ in data[:3]])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-6)
    assert bn.momentum == 0.3 and model.training and model[2].training
    with pytest.raises(PrunekitError):
        recalibrate_bn(model, [], batches=2)


# ---------------------------------------------------------------------------------------------- encoding / GA
def mbv1_space():
    model = create_model("mobilenet_v1:width_mult=0.25,num_classes=10,in_chans=1")
    space = ChannelSpace.build(model, (1, 1, 28, 28))
    return model, space, CostModel(space)


def encoding(space, **cfg):
    """The method's encoding of ``space`` for config options ``cfg`` (scales, bounds, round_to, min_channels)."""
    return mp.search_encoding(space, mp.MetaPruningConfig(**cfg))


def test_encoding_table_bounds_and_errors():
    _, space, _ = mbv1_space()
    enc = encoding(space, bounds={"first": (0.5, 1.0), "last": (1.0, 1.0)})
    assert enc.n_genes == len(space) and enc.width_members == [[i] for i in range(len(space))]
    assert len(enc.choices) == 31 and enc.choices[0] == pytest.approx(0.1) and enc.choices[-1] == 1.0
    first, last = space.tagged("first")[0].index, space.tagged("last")[0].index
    assert enc.choices[enc.low[first]] >= 0.5 and enc.low[last] == enc.high[last] == 30
    g = space.groups[6]  # 128 channels: floor(128 * 0.55) = 70
    assert enc.table[6, 15] == int(g.channels * 0.55)
    assert (enc.table >= 1).all() and (np.diff(enc.table, axis=1) >= 0).all()
    allb = encoding(space, bounds={"all": (0.4, 1.0)})
    assert (enc.choices[allb.low] >= 0.4).all()
    with pytest.raises(PrunekitError, match="no value of the width choices"):
        encoding(space, bounds={"last": (0.95, 0.96)})
    r8 = encoding(space, round_to=8, min_channels=16)  # the config's rounding reaches the width rule
    assert (r8.table % 8 == 0).all() and (r8.table >= np.minimum(16, space.channels[:, None])).all()
    with pytest.raises(ValueError):
        mp.MetaPruningConfig(bounds={"stem": (0.5, 1.0)})
    with pytest.raises(ValueError):
        mp.MetaPruningConfig(scales=[0.5, 0.3])


def test_mutation_always_moves_and_stays_in_bounds():
    b = GeneBounds(np.array([0, 2, 5]), np.array([30, 9, 5]))
    rng = np.random.default_rng(0)
    parents = b.random(rng, 500)
    kids = b.mutate(rng, parents, 1.0)
    assert ((kids >= b.low) & (kids <= b.high)).all()
    assert (kids[:, :2] != parents[:, :2]).all() and (kids[:, 2] == 5).all()
    mix = b.crossover(rng, parents, kids)
    assert ((mix == parents) | (mix == kids)).all()


def toy_search(seed=0, **cfg):
    _, space, cm = mbv1_space()
    enc = encoding(space)
    base = float(cm.macs(space.channels))
    lo, hi = 0.45 * base, 0.5 * base

    def feasible(genes):
        m = np.rint(cm.macs(enc.decode_widths(genes)))
        return (m >= lo) & (m <= hi)

    target = np.linspace(0, 30, len(space)).astype(int)

    def fitness(genes):  # deterministic, smooth in the genes
        return float(-np.abs(genes - target).mean() / 30.0)

    conf = EvolutionConfig(
        population=10, parents=4, mutations=4, crossovers=3, iterations=4, checkpoint_every=3, **cfg
    )
    return GeneticSearch(enc.bounds, conf, seed=seed), fitness, feasible, (enc, cm, lo, hi)


def test_ga_never_evaluates_outside_the_window():
    ga, fitness, feasible, (enc, cm, lo, hi) = toy_search()
    seen = []

    def evaluate(genes):
        m = float(np.rint(cm.macs(enc.decode_widths(genes))))
        assert lo <= m <= hi, "evaluated a candidate outside the MACs window"
        assert tuple(genes) not in seen, "evaluated a candidate twice"
        seen.append(tuple(genes))
        return fitness(genes)

    res = run_search(ga, lambda g: -evaluate(g), feasible=feasible, progress=False)
    top = ga.top(4)
    assert len(seen) == ga.evaluated == res.evaluations == 40 and ga.rejected > 0
    assert res.rejected == 0  # the GA screens its proposals: the loop never has to reject one
    assert [r["iteration"] for r in ga.history] == [1, 2, 3, 4]
    assert all(b["best"] >= a["best"] for a, b in zip(ga.history, ga.history[1:], strict=False))
    assert top[0][1] == max(ga.cache.values()) == -res.best[1][0]
    assert [g for g, _ in res.evaluated] == list(ga.cache) == seen  # evaluation order
    assert ga.history[-1]["best"] > ga.history[0]["best"]  # the GA improves on random search here


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_after", [1, 9, 10, 17, 33])
def test_ga_resume_equals_uninterrupted(tmp_path, kill_after):
    ref, fitness, feasible, _ = toy_search()
    ref_res = run_search(ref, lambda g: -fitness(g), feasible=feasible, progress=False)

    ga, _, _, _ = toy_search()
    path = tmp_path / "ga.json"
    calls = [0]

    def dying(genes):
        calls[0] += 1
        if calls[0] > kill_after:
            raise Killed
        return -fitness(genes)

    with pytest.raises(Killed):
        run_search(ga, dying, feasible=feasible, checkpoint=path, checkpoint_every=3, progress=False)
    again, _, _, _ = toy_search(seed=123)  # the seed comes back with the state
    res = run_search(again, lambda g: -fitness(g), feasible=feasible, checkpoint=path, checkpoint_every=3)
    assert res.resumed and res.evaluated == ref_res.evaluated and res.history == ref_res.history
    assert again.history == ref.history
    assert list(again.cache.items()) == list(ref.cache.items())
    assert [(g.tolist(), f) for g, f in again.top(5)] == [(g.tolist(), f) for g, f in ref.top(5)]
    assert again.state_dict() == ref.state_dict()


def test_ga_state_errors():
    ga, *_ = toy_search()
    with pytest.raises(PrunekitError):
        ga.load_state_dict({"format": "nope"})
    state = ga.state_dict()
    state["genes"] = 3
    with pytest.raises(PrunekitError, match="genes"):
        ga.load_state_dict(state)
    with pytest.raises(ValueError, match="exceed the population"):
        EvolutionConfig(population=10, mutations=6, crossovers=6)


def test_sampler_is_deterministic_per_step():
    model, space, cm = mbv1_space()
    enc = encoding(space)
    pn = PruningNet(model, space)
    s1, s2 = mp.SampleSubnets(pn, enc, cm, seed=4), mp.SampleSubnets(pn, enc, cm, seed=4)
    state = SimpleNamespace(step=17)
    s1.on_batch_begin(state, None)
    w1 = pn.widths
    s2.on_batch_begin(SimpleNamespace(step=18), None)
    assert not np.array_equal(w1, pn.widths)
    s2.on_batch_begin(state, None)
    assert np.array_equal(w1, pn.widths)


def test_unreachable_window_and_missing_val_are_user_errors(tmp_path):
    model, space, cm = mbv1_space()
    ctx = SimpleNamespace(
        model=model,
        space=space,
        cost=cm,
        target_macs=1000.0,
        budget=None,
        data=SimpleNamespace(val=object()),
        train=lambda *a, **k: None,
        smoke=False,
        out_dir=tmp_path,
    )
    with pytest.raises(PrunekitError, match="below the smallest model metapruning can reach"):
        mp.run(ctx, mp.MetaPruningConfig())
    ctx.target_macs = 10.0 * cm.cost().macs  # a window above the whole model
    with pytest.raises(PrunekitError, match="outside what the search space reaches"):
        mp.run(ctx, mp.MetaPruningConfig())
    ctx.target_macs = 1000.0
    ctx.data = SimpleNamespace(val=None)
    with pytest.raises(PrunekitError, match="val_fraction"):
        mp.run(ctx, mp.MetaPruningConfig())


# ---------------------------------------------------------------------------------------------- end to end
TINY = {
    "model": "mobilenet_v1:width_mult=0.25",
    "data": {
        "name": "fashion_mnist",
        "subset_train": 640,
        "subset_val": 128,
        "subset_test": 128,
        "batch_size": 64,
    },
    "target": {"macs_ratio": 0.5},
    "method": {
        "name": "metapruning",
        "bounds": {"all": [0.3, 1.0], "last": [0.5, 1.0]},
        "hidden_block": 16,
        "pruningnet_train": {"epochs": 1, "lr": 0.05, "schedule": "linear", "label_smoothing": 0.1},
        "search": {"population": 6, "parents": 3, "mutations": 2, "crossovers": 2, "iterations": 2},
        "recal_batches": 2,
        "eval_batches": 1,
        "top_k": 3,
        "final_train": {"epochs": 0.5, "lr": 0.05, "schedule": "linear"},
    },
    "export": {"onnx": False, "latency": False},
}


@needs_fmnist
def test_cli_end_to_end_and_resume(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    cfg = tmp_path / "mp.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    extra = report["extra"]
    lo, hi = extra["macs_window"]
    assert report["method"]["name"] == "metapruning"
    assert lo <= report["pruned"]["macs"] <= hi <= 0.5 * report["baseline"]["macs"] + 1
    assert 0.0 < report["pruned"]["top1"] <= 1.0
    assert extra["trained_by"] == "final_train" and "finetune" not in report["history"]
    # PruningNet phase: sampled-subnet train accuracy is logged per epoch
    pnet_rows = report["history"]["pruningnet"]
    assert pnet_rows and {"train_top1", "subnet_macs_ratio", "subnet_top1_small"} <= set(pnet_rows[0])
    # search history and statistics
    rows = report["history"]["method"]
    assert [r["iteration"] for r in rows] == [1, 2] and all(lo <= r["best_macs"] <= hi for r in rows)
    assert extra["search"]["evaluated"] == 12 and extra["search"]["candidates_per_min"] > 0
    # the chosen plan and the saved top-k plans (never pasted by hand)
    plan = Plan.load(out / "plan.json")
    space = ChannelSpace.build(create_model(plan.model), tuple(plan.input_shape))
    assert plan.widths(space).tolist() == extra["chosen"]["widths"]
    assert len(extra["candidates"]) == 3
    first = Plan.load(out / extra["candidates"][0])
    assert first.meta["rank"] == 1 and first.meta["fitness_val_top1"] == extra["chosen"]["fitness_val_top1"]
    assert first.widths(space).tolist() == extra["chosen"]["widths"]
    for fig in extra["figures"].values():
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "metapruning" / "search_state.json").is_file()

    # a run killed in the middle of the search resumes (PruningNet from its checkpoint, the search from its state)
    # and ends with the result of the uninterrupted run
    killed = tmp_path / "killed"
    calls = [0]
    original = mp.PruningNetFitness.__call__

    def dying(self, genes):
        calls[0] += 1
        if calls[0] == 9:  # iteration 2, after its population was proposed and checkpointed
            raise KeyboardInterrupt
        return original(self, genes)

    monkeypatch.setattr(mp.PruningNetFitness, "__call__", dying)
    assert main(["run", str(cfg), "--out", str(killed)]) != 0
    saved = json.loads((killed / "metapruning" / "search_state.json").read_text())
    ga_state = saved["searcher"]
    assert ga_state["iteration"] == 1 and ga_state["pending"] is not None and len(saved["cache"]) == 6
    monkeypatch.setattr(mp.PruningNetFitness, "__call__", original)
    code = main(["run", str(cfg), "--out", str(killed)])
    assert code == 0, capsys.readouterr().err
    again = json.loads((killed / "report.json").read_text())
    assert again["extra"]["search"]["resumed"] is True
    assert again["extra"]["chosen"] == extra["chosen"]
    assert again["history"]["method"] == report["history"]["method"]
    assert again["pruned"]["top1"] == report["pruned"]["top1"]


@needs_fmnist
def test_cli_bad_method_option_exit_2(tmp_path, capsys):
    tree = {**TINY, "method": {**TINY["method"], "bounds": {"stem": [0.5, 1.0]}}}
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    code = main(["run", str(cfg), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bounds" in err and err.count("\n") == 1


def test_plan_from_widths_matches_pruningnet_keep_sets():
    """The exported plan keeps the first-k channels: the same plan plan_from_widths makes without importance."""
    pn, space = build(GroupedConv())
    w = random_widths(space, 7)
    _, plan = pn.subnet(w)
    ref = plan_from_widths(space, w)
    assert plan.groups == ref.groups


def test_smoke_config_shrinks_everything():
    cfg = mp.MetaPruningConfig(final_train=TrainConfig(epochs=30))
    small = mp._smoke_config(cfg)
    assert small.pruningnet_train.epochs == 1 and small.final_train.epochs == 1
    assert small.search.iterations <= 2 and small.search.population <= 6 and small.recal_batches <= 2


@pytest.mark.parametrize("net", [ResidualProj, DenseConcat])
def test_recalibration_in_the_pruningnet_matches_recalibrating_the_subnet(net):
    """Cropped BN statistics are updated and written back: recalibrating inside the PruningNet gives the statistics
    that recalibrating the exported plain subnet gives."""
    pn, space = build(randomize_bn(net()))
    perturb_generators(pn)
    w = random_widths(space, 2)
    before, _ = pn.subnet(w)
    data = batches(3, seed=4)
    recalibrate_bn(before, data, batches=3)
    recalibrate_bn(pn, data, batches=3)
    after, _ = pn.subnet()
    pairs = [
        (a, b)
        for a, b in zip(before.modules(), after.modules(), strict=True)
        if isinstance(a, nn.BatchNorm2d)
    ]
    assert pairs
    for a, b in pairs:
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, atol=1e-4)
        assert not torch.allclose(a.running_var, torch.ones_like(a.running_var))


def test_canonical_genes_merge_scales_of_equal_width():
    _, space, _ = mbv1_space()
    enc = encoding(space, round_to=8, min_channels=8, bounds={"all": (0.3, 1.0)})
    rng = np.random.default_rng(0)
    genes = enc.bounds.random(rng, 200)
    canon = enc.canonical(genes)
    assert np.array_equal(enc.decode_widths(canon), enc.decode_widths(genes))
    assert (canon >= enc.bounds.low).all() and (canon <= genes).all()
    assert np.array_equal(enc.canonical(canon), canon)
    # every width has exactly one canonical gene
    for i in range(len(space)):
        allowed = np.arange(enc.bounds.low[i], enc.bounds.high[i] + 1)
        reps = {int(enc.canonical(np.full((1, len(space)), k))[0, i]) for k in allowed}
        assert len(reps) == len(set(enc.table[i, allowed].tolist()))


def test_ga_survives_an_exhausted_space(tmp_path):
    """A tiny space runs out of new candidates: later iterations are empty, not an error."""
    b = GeneBounds(np.array([0, 0]), np.array([1, 1]))  # 4 encodings in all
    ga = GeneticSearch(
        b,
        EvolutionConfig(population=3, parents=2, mutations=1, crossovers=1, iterations=4, random_tries=5),
        feasible=lambda g: np.ones(len(g), dtype=bool),
    )
    run_search(ga, lambda g: -float(g.sum()), progress=False)
    assert ga.evaluated == 4 and ga.top(1)[0][1] == 2.0
    assert ga.history[-1]["population"] == 0 and ga.history[-1]["mean"] is None
    mp.plot_search_curve(
        [
            {"iteration": r["iteration"], "best_val_top1": r["best"], "mean_val_top1": r["mean"]}
            for r in ga.history
        ],
        tmp_path / "curve.png",
    )
    assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"
