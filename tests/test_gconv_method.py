"""The gconv method: group rules, the seed's group-config import, the MAX_COST local search, the method on real
models (masked == applied == ONNX Runtime), and a tiny end-to-end run on real Fashion-MNIST."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.cost.budget import Budget, Constraint
from prunekit.cost.macs import CostModel
from prunekit.errors import PrunekitError
from prunekit.methods import parse_method_config
from prunekit.methods.base import MethodContext
from prunekit.methods.gconv import run
from prunekit.methods.gconv.groups import GroupRules, read_group_config, table_choice
from prunekit.methods.gconv.prune import regroupable
from prunekit.methods.gconv.search import max_cost_search
from prunekit.models import create_model
from prunekit.space import ChannelSpace, mask, plan_from_widths, uniform_widths

SHAPE = (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------- rules
def test_group_rules_follow_the_seed_limits():
    r = GroupRules()
    assert r.candidates(64, 64) == [1, 2, 4, 8, 16, 32]  # 64 = depthwise, excluded
    assert GroupRules(allow_depthwise=True).candidates(64, 64)[-1] == 64
    assert GroupRules(max_groups=8).candidates(64, 128) == [1, 2, 4, 8]
    assert GroupRules(min_factor=8).candidates(64, 32) == [1, 2, 4]  # min(64, 32) / G >= 8
    assert r.candidates(12, 18) == [1, 2, 3, 6]
    assert r.candidates(7, 5) == [1]


def test_the_seeds_group_config_json_imports(tmp_path):
    path = tmp_path / "resnet34_A.json"
    path.write_text(
        json.dumps(
            {
                "module.layer1.0.conv1": {"G": 8, "F": 64, "C": 64, "id": 1},
                "module.layer1.0.conv2": {"G": 8, "F": 64, "C": 64, "id": 2},
                "layer2.0.conv1": 4,
            }
        )
    )
    groups, expected = read_group_config(path)
    assert groups == {"layer1.0.conv1": 8, "layer1.0.conv2": 8, "layer2.0.conv1": 4}
    assert expected["layer1.0.conv1"] == (64, 64) and expected["layer2.0.conv1"] == (None, None)
    cands = {"layer1.0.conv1": [1, 2, 4, 8], "layer1.0.conv2": [1, 2, 4, 8], "layer2.0.conv1": [1, 2, 4]}
    shapes = {"layer1.0.conv1": (64, 64), "layer1.0.conv2": (64, 64), "layer2.0.conv1": (64, 128)}
    assert table_choice(cands, groups, shapes=shapes, expected=expected) == groups
    with pytest.raises(PrunekitError, match="F=64, C=64; the model's layer has F=32"):
        table_choice(cands, groups, shapes={**shapes, "layer1.0.conv1": (64, 32)}, expected=expected)
    with pytest.raises(PrunekitError, match="not a dense conv"):
        table_choice(cands, {"fc": 2})
    with pytest.raises(PrunekitError, match="legal here"):
        table_choice(cands, {"layer2.0.conv1": 8})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"conv": {"F": 3}}))
    with pytest.raises(PrunekitError, match="positive integer G"):
        read_group_config(bad)
    with pytest.raises(PrunekitError, match="not found"):
        read_group_config(tmp_path / "missing.json")


def test_config_needs_exactly_one_group_choice():
    assert parse_method_config({"name": "gconv", "groups": 2}).groups == 2
    for bad in ({"name": "gconv"}, {"name": "gconv", "groups": 2, "mcpg": 8}):
        with pytest.raises(PrunekitError, match="exactly one group choice"):
            parse_method_config(bad)


# ---------------------------------------------------------------------------------------------- search
def _enumerate(levels, kept, cost, limit):
    best = None
    names = list(levels)
    for combo in itertools.product(*(levels[n] for n in names)):
        total = sum(cost[n][g] for n, g in zip(names, combo, strict=True))
        if total > limit:
            continue
        value = float(np.mean([kept[n][g] for n, g in zip(names, combo, strict=True)]))
        if best is None or value > best[0] + 1e-12:
            best = (value, combo)
    return best


def _feasible(cost, limit):
    def f(groups):
        total = sum(np.array([cost[n][int(x)] for x in g]) for n, g in groups.items())
        return total <= limit

    return f


@st.composite
def separable_problems(draw, unit_steps: bool):
    n = draw(st.integers(1, 4))
    levels, kept, cost = {}, {}, {}
    for i in range(n):
        k = draw(st.integers(2, 4))
        gs = [2**j for j in range(k)][::-1]  # descending G
        # gains of each step (G -> next smaller G): decreasing (diminishing returns) when unit_steps
        steps = sorted(
            draw(st.lists(st.floats(0.01, 1.0), min_size=k - 1, max_size=k - 1)), reverse=unit_steps
        )
        frac = np.concatenate([[0.0], np.cumsum(steps)])
        frac = frac / (frac[-1] + draw(st.floats(0.0, 0.5)) + 1e-9)
        kept[f"l{i}"] = {g: float(f) for g, f in zip(gs, frac, strict=True)}
        per = (
            [1.0] * (k - 1)
            if unit_steps
            else draw(st.lists(st.floats(0.5, 3.0), min_size=k - 1, max_size=k - 1))
        )
        c = np.concatenate([[draw(st.floats(1.0, 5.0))], per]).cumsum()
        cost[f"l{i}"] = {g: float(x) for g, x in zip(gs, c, strict=True)}
        levels[f"l{i}"] = gs
    start = sum(cost[n][levels[n][0]] for n in levels)
    top = sum(cost[n][levels[n][-1]] for n in levels)
    limit = draw(st.floats(start, top + 1.0))
    return levels, kept, cost, limit


@settings(max_examples=60, deadline=None)
@given(separable_problems(unit_steps=True))
def test_local_search_finds_the_enumerated_optimum_of_diminishing_returns(problem):
    levels, kept, cost, limit = problem
    out = max_cost_search(levels, kept, cost, _feasible(cost, limit))
    groups = {n: out.choice.get(n, 1) for n in levels}
    assert sum(cost[n][g] for n, g in groups.items()) <= limit  # never over budget
    best, _ = _enumerate(levels, kept, cost, limit)
    assert out.kept_fraction == pytest.approx(best, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(separable_problems(unit_steps=False))
def test_local_search_never_returns_a_choice_over_budget(problem):
    levels, kept, cost, limit = problem
    out = max_cost_search(levels, kept, cost, _feasible(cost, limit))
    groups = {n: out.choice.get(n, 1) for n in levels}
    assert sum(cost[n][g] for n, g in groups.items()) <= limit
    # it stops only when no single further step fits the budget and gains
    for n, gs in levels.items():
        i = gs.index(groups[n])
        if i + 1 < len(gs):
            moved = {**groups, n: gs[i + 1]}
            fits = sum(cost[m][g] for m, g in moved.items()) <= limit
            assert not (fits and kept[n][gs[i + 1]] > kept[n][gs[i]] + 1e-12)


def test_local_search_refuses_a_start_over_budget():
    levels = {"a": [4, 2, 1]}
    cost = {"a": {4: 10.0, 2: 20.0, 1: 40.0}}
    with pytest.raises(PrunekitError, match="already over the budget"):
        max_cost_search(levels, {"a": {4: 0.2, 2: 0.5, 1: 1.0}}, cost, _feasible(cost, 5.0))


# ---------------------------------------------------------------------------------------------- method
class _Data:
    def __init__(self, shape, n=4):
        g = torch.Generator().manual_seed(0)
        self.train = [
            (torch.randn(8, *shape[1:], generator=g), torch.randint(0, 10, (8,), generator=g))
            for _ in range(n)
        ]


def _ctx(spec="resnet20", shape=SHAPE, budget=None, tmp_path=Path(".")):
    torch.manual_seed(0)
    model = create_model(spec).eval()
    space = ChannelSpace.build(model, shape, quiet=True)
    cm = CostModel(space)
    return MethodContext(
        model=model,
        spec=spec,
        space=space,
        cost=cm,
        target_macs=None,
        data=_Data(shape),
        device="cpu",
        out_dir=tmp_path,
        finetune=lambda *a, **k: None,
        evaluate=lambda m, s: {"top1": 0.0},
        budget=budget,
    )


def _masked_equals_applied(ctx, result, bn_batches=16):
    """The applied group-conv model computes what the masked dense model computes (both with their BN statistics
    recomputed on the same batches, as the method does after regrouping)."""
    from prunekit.train.bn import recalibrate_bn

    masked, _ = mask(ctx.model, result.plan, ctx.space)
    if bn_batches and result.extra.get("recovery") == "finetune":
        recalibrate_bn(masked, ctx.data.train, batches=bn_batches)
    x = torch.randn(2, *ctx.space.input_shape[1:])
    with torch.no_grad():
        a, b = masked.eval()(x), result.model.eval()(x)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_uniform_groups_make_real_group_convs_equal_to_the_masked_model(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    res = run(ctx, parse_method_config({"name": "gconv", "groups": 4, "measure_overhead": False}))
    names = regroupable(ctx.space, ["first"])
    assert "conv1" not in names and "fc" not in names
    grouped = {
        n: m.groups for n, m in res.model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1
    }
    assert len(grouped) == len(names) and set(grouped.values()) == {4}
    assert all(r["params"] < r["params_dense"] for r in res.history)
    assert all(0 < r["kept_fraction"] < 1 for r in res.history)
    assert ctx.cost.cost(res.plan).params < ctx.cost.cost().params
    _masked_equals_applied(ctx, res)


def test_grps_plan_masked_equals_the_exported_grouped_model_in_onnx_runtime(tmp_path):
    """masked dense model == applied group convs (with their channel gathers) == the ONNX file in ONNX Runtime."""
    import onnx
    import onnxruntime as ort

    from prunekit.export import export_onnx

    ctx = _ctx(tmp_path=tmp_path)
    res = run(ctx, parse_method_config({"name": "gconv", "groups": 4, "heuristic": "grps", "bn_batches": 0}))
    perms = [n for n, lc in res.plan.layers.items() if lc.conv_groups and (lc.perm_in or lc.perm_out)]
    assert perms, "GRPS permuted no layer: the gathers would go untested"
    masked, _ = mask(ctx.model, res.plan, ctx.space)
    info = export_onnx(res.model, tmp_path / "g.onnx", ctx.space.input_shape, verify=True)
    assert info.max_abs_diff is not None and info.max_abs_diff < 1e-4
    groups = [
        a.i
        for n in onnx.load(tmp_path / "g.onnx").graph.node
        if n.op_type == "Conv"
        for a in n.attribute
        if a.name == "group" and a.i > 1
    ]
    assert groups and set(groups) == {4}
    x = torch.randn(3, *ctx.space.input_shape[1:])
    sess = ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = masked.eval()(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_layers_are_excluded_by_tag_or_name_pattern():
    space = ChannelSpace.build(create_model("resnet20").eval(), SHAPE, quiet=True)
    every = set(regroupable(space, []))
    strided = {n for n, s in space.layers.items() if n in every and s.stride > 1}
    assert strided and set(regroupable(space, ["strided"])) == every - strided
    assert "conv1" in every and "conv1" not in regroupable(space, ["first"])
    residual = every - set(regroupable(space, ["residual"]))
    assert residual and all(n == "conv1" or n.endswith(("conv2", "downsample.0")) for n in residual), residual
    by_name = set(regroupable(space, ["layer3.*"]))
    assert by_name and not any(n.startswith("layer3.") for n in by_name)
    assert {n for n in every if n.startswith("layer3.")} == every - by_name


def test_grps_keeps_at_least_the_mass_of_same_on_a_whole_model(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    kept = {}
    for h in ("same", "sort", "grps"):
        cfg = {"name": "gconv", "groups": 2, "heuristic": h, "measure_overhead": False}
        kept[h] = run(ctx, parse_method_config(cfg)).extra["mean_kept_fraction"]
    assert all(0.5 - 1e-9 <= k < 1 for k in kept.values()), kept  # 2 blocks of 4: at least the mean
    assert kept["grps"] >= kept["same"] - 1e-12, kept


def test_search_stays_within_a_params_budget_and_composes_with_channel_pruning(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    widths = uniform_widths(ctx.space, 0.75, round_to=4)
    chan = plan_from_widths(ctx.space, widths, spec=ctx.spec)
    chan.save(tmp_path / "plan.json")
    base_params = ctx.cost.cost(chan).params
    limit = 0.6 * base_params
    ctx.budget = Budget([Constraint("params", limit, None, base_params, "analytic")], ctx.cost)
    cfg = parse_method_config(
        {
            "name": "gconv",
            "search": True,
            "channel_plan": str(tmp_path / "plan.json"),
            "measure_overhead": False,
        }
    )
    res = run(ctx, cfg)
    assert ctx.cost.cost(res.plan).params <= limit
    assert (res.plan.widths(ctx.space) == widths).all()
    assert res.extra["moves"], "the search made no move"
    assert len({r["groups"] for r in res.history}) > 1  # a mixed configuration, not one G everywhere
    for r in res.history:
        assert r["c_in"] % r["groups"] == 0 and r["c_out"] % r["groups"] == 0
    _masked_equals_applied(ctx, res)
    assert ctx.budget.value("params", res.plan) == ctx.cost.cost(res.plan).params  # budgets count the groups


def test_search_under_a_predicted_latency_budget_never_exceeds_it(tmp_path, monkeypatch):
    """The MAX_COST search with ``latency_ms`` as the budget and as the move cost (``search_cost: latency``),
    predicted from a latency table (synthetic timings: ms ~ MACs / G, so a smaller G costs time)."""
    from tests.test_lut import fake_overhead, fake_time

    from prunekit.cost.lut import build_table
    from prunekit.cost.predict import LatencyModel

    fake_time(monkeypatch)
    ctx = _ctx(tmp_path=tmp_path)
    table = build_table(
        ctx.model,
        SHAPE,
        tmp_path / "r20.lut.json",
        spec="resnet20",
        points=3,
        groups=(1, 2, 4, 8),
        densities=(1.0,),
        overhead=fake_overhead,
    )
    lat = LatencyModel(table, ctx.space, batch=1)
    base_ms = lat.predict(plan_from_widths(ctx.space, ctx.space.channels))
    assert base_ms > 0
    every_g8 = run(ctx, parse_method_config({"name": "gconv", "groups": 8, "measure_overhead": False}))
    floor_ms = lat.predict(every_g8.plan)
    limit = floor_ms + 0.4 * (
        base_ms - floor_ms
    )  # between all-at-largest-G and dense: the search must stop inside
    ctx.budget = Budget([Constraint("latency_ms", limit, None, base_ms, "predicted")], ctx.cost, latency=lat)
    res = run(
        ctx,
        parse_method_config(
            {"name": "gconv", "search": True, "search_cost": "latency", "measure_overhead": False}
        ),
    )
    got = lat.predict(res.plan)
    assert got <= limit + 1e-9, (got, limit)
    assert res.extra["moves"], "the search made no move"
    assert got > floor_ms  # it moved some layer to a smaller G while the budget held
    assert len({r["groups"] for r in res.history}) > 1


def test_search_without_a_budget_and_an_impossible_budget_fail_clearly(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    with pytest.raises(PrunekitError, match="needs a budget"):
        run(ctx, parse_method_config({"name": "gconv", "search": True}))
    base = ctx.cost.cost().params
    ctx.budget = Budget([Constraint("params", 0.01 * base, 0.01, base, "analytic")], ctx.cost)
    with pytest.raises(PrunekitError, match="already over the budget"):
        run(ctx, parse_method_config({"name": "gconv", "search": True}))


def test_taylor_criterion_and_mcpg_and_scratch_recovery(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    res = run(
        ctx,
        parse_method_config(
            {
                "name": "gconv",
                "mcpg": 8,
                "criterion": "taylor",
                "recovery": "scratch",
                "measure_overhead": False,
            }
        ),
    )
    for r in res.history:
        assert r["c_in"] // r["groups"] <= 8
    # scratch: the weights are re-initialised, not the baseline's
    base_w = ctx.model.get_submodule("layer1.0.conv1").weight
    new_w = res.model.get_submodule("layer1.0.conv1")
    new_w = getattr(new_w, "conv", new_w).weight
    assert new_w.shape[1] == base_w.shape[1] // res.plan.layers["layer1.0.conv1"].conv_groups
    assert not torch.allclose(new_w, base_w[: new_w.shape[0], : new_w.shape[1]])


def test_gather_overhead_is_measured_when_orders_cannot_be_folded(tmp_path):
    ctx = _ctx(tmp_path=tmp_path)
    res = run(ctx, parse_method_config({"name": "gconv", "groups": 2}))
    oh = res.extra["gather_overhead"]
    assert oh["gathers"] >= 0
    if oh["gathers"]:
        assert oh["ms"] > 0 and oh["ms_without_perms"] > 0


# ---------------------------------------------------------------------------------------------- end to end
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_gconv_runs_end_to_end_on_fashion_mnist(tmp_path, capsys, monkeypatch):
    import yaml

    from prunekit.cli import main
    from prunekit.runs import load_run

    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    cfg = {
        "model": "resnet20:width_mult=0.5",
        "data": {
            "name": "fashion_mnist",
            "subset_train": 1000,
            "subset_val": 200,
            "subset_test": 300,
            "batch_size": 64,
        },
        "baseline": {"train": {"epochs": 2, "lr": 0.1}},
        "target": {"params_ratio": 0.6},
        "method": {"name": "gconv", "search": True},
        "finetune": {"epochs": 1, "lr": 0.01},
        "export": {"latency_batch": 8},
    }
    path = tmp_path / "gconv.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    code = main(["run", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "gconv"
    assert report["pruned"]["params"] <= 0.6 * report["baseline"]["params"]
    assert report["pruned"]["top1"] > 0.2  # trained, not random (10 classes: 0.1)
    extra = report["extra"]
    assert extra.get("regrouped", 0) > 0, extra
    model, plan, _ = load_run(out)
    assert any(lc.conv_groups and lc.conv_groups > 1 for lc in plan.layers.values())
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in model.modules())
    assert "Group convolutions" in (out / "report.md").read_text()


def test_no_permutation_means_no_gathers_and_the_least_kept_mass(tmp_path):
    from prunekit.nn import GatherConv

    ctx = _ctx(tmp_path=tmp_path)
    plain = run(
        ctx,
        parse_method_config({"name": "gconv", "groups": 2, "heuristic": "none", "measure_overhead": False}),
    )
    grps = run(ctx, parse_method_config({"name": "gconv", "groups": 2, "measure_overhead": False}))
    assert not any(isinstance(m, GatherConv) for m in plain.model.modules())
    assert any(
        isinstance(m, GatherConv) for m in grps.model.modules()
    )  # residual streams cannot fold every order
    assert plain.extra["mean_kept_fraction"] <= grps.extra["mean_kept_fraction"]
    _masked_equals_applied(ctx, plain)
