"""The ``jcw`` method (issue #13): a bit-identical resume of the search loop after a kill, the front files, and a
tiny end-to-end ``prunekit run`` on a real Fashion-MNIST subset (search -> front -> REGULAR / ADMM / FT member)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tests.test_lut import fake_overhead, fake_time
from tests.test_train import cfg_, loaders, new_model

from prunekit.cli import main
from prunekit.cost.lut import build_table
from prunekit.cost.predict import LatencyModel
from prunekit.io import load_state, load_weights
from prunekit.methods.jcw import search as jsearch
from prunekit.methods.jcw.front import front_indices
from prunekit.models import create_model
from prunekit.search.encoding import DensityGenes, GeneEncoding, WidthGenes
from prunekit.search.nsga2 import NSGA2, NSGA2Config
from prunekit.space import ChannelSpace, Plan, rebuild

SHAPE = (1, 3, 8, 8)


def _phase(tmp_path, monkeypatch, out):
    fake_time(monkeypatch)
    model = new_model(0, width=16)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    table = build_table(
        model.eval(), SHAPE, tmp_path / "t.json", points=3, groups=(1,), overhead=fake_overhead
    )
    lm = LatencyModel(table, space)
    enc = GeneEncoding.build(
        space,
        widths=WidthGenes.jcw(bounds={"all": (0.3, 1.0)}),
        densities=DensityGenes.jcw(kinds=["conv", "linear"]),
    )
    train, val = loaders(bs=16)
    proxy = jsearch.Proxy(train, val, [b for b, _ in zip(train, range(2), strict=False)])
    lo, hi = jsearch.latencies(enc, lm, np.stack([enc.bounds.low, enc.bounds.high]))
    searcher = NSGA2(enc.bounds, NSGA2Config.jcw(population=4, generations=2), seed=0, target_range=(lo, hi))
    kw = dict(
        model=model,
        fresh=lambda: new_model(1, width=16),
        space=space,
        enc=enc,
        lm=lm,
        searcher=searcher,
        proxy=proxy,
        cns=cfg_(epochs=0.5),
        wp=cfg_(epochs=0.5),
        mode="finetune",
        finetune_epochs=0.25,
        seed=0,
        device="cpu",
        out_dir=out,
        fingerprint="x",
    )
    return kw


class Killed(Exception):
    pass


def test_a_killed_search_resumes_to_the_same_population_and_supernet(tmp_path, monkeypatch):
    ref_kw = _phase(tmp_path, monkeypatch, tmp_path / "ref")
    ref = jsearch.run_search_phase(**ref_kw)
    assert len(ref.history) == 3 and ref.facts["evaluations"] == 4 + 8 + 8

    real = jsearch.proxy_losses
    calls = [0]

    def dying(*a, **k):
        calls[0] += 1
        if calls[0] == 3:  # inside generation 2, after generations 0 and 1 were checkpointed
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(jsearch, "proxy_losses", dying)
    with pytest.raises(Killed):
        jsearch.run_search_phase(**_phase(tmp_path, monkeypatch, tmp_path / "run"))
    monkeypatch.setattr(jsearch, "proxy_losses", real)
    kw = _phase(tmp_path, monkeypatch, tmp_path / "run")
    again = jsearch.run_search_phase(**kw)
    assert np.array_equal(again.genes, ref.genes)
    np.testing.assert_array_equal(again.objectives, ref.objectives)
    for k, v in ref_kw["model"].state_dict().items():
        assert torch.equal(v, kw["model"].state_dict()[k]), k
    other = _phase(tmp_path, monkeypatch, tmp_path / "run")
    other["fingerprint"] = "y"
    with pytest.raises(Exception, match="another setup"):
        jsearch.run_search_phase(**other)


def test_front_indices_are_non_dominated_and_latency_sorted():
    F = np.array([[0.5, 3.0], [0.4, 4.0], [0.6, 2.0], [0.7, 3.5], [0.5, 3.0]])
    assert front_indices(F).tolist() == [2, 0, 1]


@pytest.fixture
def r20_lut(tmp_path, monkeypatch):
    """A latency table of the FMNIST ResNet-20 with synthetic timings (ms ~ MACs; density buys nothing, as in ONNX
    Runtime): the test is about the method, and a measured table takes a minute to build."""
    fake_time(monkeypatch)
    path = tmp_path / "r20.lut.json"
    model = create_model("resnet20:in_chans=1").eval()
    build_table(
        model,
        (1, 1, 28, 28),
        path,
        spec="resnet20:in_chans=1",
        points=3,
        groups=(1,),
        densities=(1.0, 0.5),
        overhead=fake_overhead,
    )
    return path


def test_jcw_end_to_end_on_fashion_mnist(tmp_path, capsys, monkeypatch, r20_lut):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    tiny = {"epochs": 0.3, "lr": 0.05}
    cfg = {
        "model": "resnet20",
        "data": {"name": "fashion_mnist", "subset_train": 600, "subset_val": 100, "subset_test": 200},
        "baseline": {"train": {"epochs": 1, "lr": 0.1}},
        "target": {"latency_ratio": 0.9, "latency_lut": str(r20_lut)},
        "method": {
            "name": "jcw",
            "proxy": {"train_per_class": 20, "val_per_class": 5},
            "supernet": {"cns": tiny, "wp": tiny, "finetune_epochs": 0.2},
            "bn_batches": 2,
            "search": {"population": 4, "generations": 1},
            "member": {"regular": tiny, "admm": {"epochs": 0.3, "lr": 0.005}, "rho": 0.01, "ft": tiny},
            "train": {"latency_ratio": [1.0, 0.95]},  # more members from the same front, in the same run
        },
        "finetune": {"epochs": 0.2, "lr": 0.01},
        "export": {
            "onnx": False,
            "latency": False,
        },  # the run's measured latency is the pipeline's, tested elsewhere
    }
    path = tmp_path / "jcw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
    front = json.loads((out / "front" / "front.json").read_text())["members"]
    assert front and (out / "jcw" / "front.png").is_file()
    assert "## Front" in (out / "report.md").read_text()
    lat = [m["predicted_ms"] for m in front]
    assert lat == sorted(lat)
    assert any(m["mean_density"] < 1.0 for m in front)  # the joint space was searched
    for m in front:
        plan = Plan.load(out / "front" / m["file"])
        assert plan.meta["predicted_ms"] == m["predicted_ms"]
        rebuild(plan)  # every member rebuilds from its plan alone
    report = json.loads((out / "report.json").read_text())
    assert report["method"]["name"] == "jcw"
    member = report["extra"]["member"]
    (row,) = [c for c in report["constraints"] if c["metric"] == "latency_ms"]
    assert member["predicted_ms"] <= row["asked"] * (1 + 1e-9)  # the deployed member is within the budget
    assert report["pruned"]["macs"] <= report["baseline"]["macs"]
    if member["sparse_layers"]:  # its trained weights carry the block sparsity of its densities
        assert member["density"] < 1.0
    # every front member measured in ONNX Runtime beside its prediction
    assert all(m["measured_ms"] > 0 and m["measured_ratio"] > 0 for m in front)
    assert "measured ms" in (out / "report.md").read_text()
    assert "Trained members" in (out / "report.md").read_text()
    # method.train: per budget the lowest-loss member within it, trained, saved and restorable from its directory
    trained = report["extra"]["members"]
    full = json.loads((out / "front" / "front.json").read_text())["full_ms"]
    for ratio in (1.0, 0.95):
        ok = [m for m in front if m["predicted_ms"] <= ratio * full * (1 + 1e-9)]
        if ok:
            best = min(ok, key=lambda m: m["proxy_loss"])["member"]
            assert any(t["member"] == best and f"latency_ratio {ratio:g}" in t["budgets"] for t in trained)
    assert trained
    for t in trained:
        d = out / t["dir"]
        net = rebuild(Plan.load(d / "plan.json"))
        load_weights(net, load_state(d / "model.safetensors"), "model.safetensors")  # strict: same shapes
        assert 0.0 <= t["test_top1"] <= 1.0 and t["predicted_ms"] > 0

    # any front member trains through the `plan` method: no encoding copied by hand
    sparse = [m for m in front if m["mean_density"] < 1.0][0]
    cfg2 = {k: v for k, v in cfg.items() if k not in ("method", "target")}
    cfg2["method"] = {
        "name": "plan",
        "plan": str(out / "front" / sparse["file"]),
        "train": {"regular": tiny, "admm": {"epochs": 0.3, "lr": 0.005}, "ft": tiny},
    }
    path2 = tmp_path / "member.yaml"
    path2.write_text(yaml.safe_dump(cfg2))
    out2 = tmp_path / "member"
    assert main(["run", str(path2), "--out", str(out2)]) == 0, capsys.readouterr().err
    rep2 = json.loads((out2 / "report.json").read_text())
    assert rep2["method"]["name"] == "plan" and rep2["extra"]["sparse_layers"] > 0
    assert rep2["extra"]["density"] < 1.0
    plan2, chosen = Plan.load(out2 / "plan.json"), Plan.load(out / "front" / sparse["file"])
    assert plan2.groups == chosen.groups  # the member's channels, as searched
    assert {n: lc.density for n, lc in plan2.layers.items()} == {
        n: lc.density for n, lc in chosen.layers.items()
    }


@pytest.mark.parametrize(
    ("name", "ref_macs"),
    [
        ("imagenet-resnet18-jcw", 1.82e9),
        ("imagenet-mobilenet_v1-jcw", 569e6),
        ("imagenet-mobilenet_v2-jcw", 300e6),
    ],
)
def test_imagenet_jcw_presets_build_their_search_space(name, ref_macs):
    """No ImageNet here: the preset loads, its model has the published MACs, and its bounds leave room to prune."""
    from prunekit.config import load_config
    from prunekit.cost.macs import CostModel
    from prunekit.methods.jcw import search_space

    cfg = load_config(f"configs/{name}.yaml")
    space = ChannelSpace.build(create_model(cfg.model), (1, 3, 224, 224), quiet=True)
    cost = CostModel(space)
    assert cost.cost().macs == pytest.approx(ref_macs, rel=0.02)

    class Ctx:
        pass

    ctx = Ctx()
    ctx.space = space
    enc = search_space(ctx, cfg.method, unit=8)
    low = enc.decode(enc.bounds.low)
    assert enc.slices["densities"].stop > enc.slices["densities"].start  # densities are searched
    assert cost.cost(low).effective_macs < 0.5 * cost.cost().macs


def test_an_unreachable_latency_target_is_one_line_before_any_search(tmp_path, capsys, monkeypatch, r20_lut):
    cfg = {
        "model": "resnet20",
        "data": {"name": "fashion_mnist", "subset_train": 200, "subset_val": 50, "subset_test": 50},
        "baseline": {"train": {"epochs": 0.2, "lr": 0.1}},
        "target": {"latency_ratio": 0.3, "latency_lut": str(r20_lut)},  # above 1 channel per group
        "method": {"name": "jcw"},
        "export": {"onnx": False},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "smallest model of the search space" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "run" / "jcw" / "search.pt").exists()


def test_plan_method_picks_the_best_front_member_within_a_latency(tmp_path):
    from prunekit.errors import PrunekitError
    from prunekit.methods.plan import FrontPick, pick_member

    rows = [
        {"member": 0, "file": "member-0.json", "predicted_ms": 2.0, "proxy_loss": 0.9},
        {"member": 1, "file": "member-1.json", "predicted_ms": 3.0, "proxy_loss": 0.7},
        {"member": 2, "file": "member-2.json", "predicted_ms": 4.0, "proxy_loss": 0.5},
    ]
    (tmp_path / "front.json").write_text(json.dumps({"full_ms": 5.0, "members": rows}))
    assert pick_member(tmp_path, FrontPick(latency_ms=3.5)).name == "member-1.json"
    assert pick_member(tmp_path, FrontPick(latency_ratio=0.8)).name == "member-2.json"  # 4.0 <= 0.8 x 5
    assert pick_member(tmp_path, FrontPick(latency_ratio=0.5)).name == "member-0.json"
    with pytest.raises(PrunekitError, match="fastest: 2 ms"):
        pick_member(tmp_path, FrontPick(latency_ms=1.0))
    with pytest.raises(ValueError):
        FrontPick()


def test_a_latency_ratio_reads_the_measured_ratio_where_the_front_was_timed(tmp_path):
    """The MobileNetV2 preset deployed a member predicted at 0.64 and measured at 0.704 for a 0.70 target: where
    the front was timed, a ratio budget is decided by the measurement; an ms budget, and an untimed front, by the
    prediction."""
    from prunekit.errors import PrunekitError
    from prunekit.methods.plan import FrontPick, pick_member
    from prunekit.search.front import best_within, latency_ratio, ratio_source

    rows = [  # full_ms 10: predicted ratios 0.60 / 0.64 / 0.83
        {
            "member": 0,
            "file": "member-0.json",
            "predicted_ms": 6.0,
            "measured_ratio": 0.62,
            "proxy_loss": 0.9,
        },
        {
            "member": 1,
            "file": "member-1.json",
            "predicted_ms": 6.4,
            "measured_ratio": 0.704,
            "proxy_loss": 0.7,
        },
        {
            "member": 2,
            "file": "member-2.json",
            "predicted_ms": 8.3,
            "measured_ratio": 0.87,
            "proxy_loss": 0.6,
        },
    ]
    assert latency_ratio(rows[1], 10.0) == pytest.approx(0.704)
    assert best_within(rows, full_ms=10.0, ratio=0.7) == 0  # member 1 is predicted inside, measured outside
    assert best_within(rows, full_ms=10.0, ratio=0.704) == 1  # the boundary is inclusive
    assert best_within(rows, full_ms=10.0, ratio=0.6) is None
    assert best_within(rows, full_ms=10.0, limit_ms=7.0) == 1  # an absolute budget: the prediction
    untimed = [{k: v for k, v in r.items() if k != "measured_ratio"} for r in rows]
    assert best_within(untimed, full_ms=10.0, ratio=0.7) == 1  # no measurement: the predicted 0.64
    assert ratio_source(rows) == "measured" and ratio_source(untimed) == "predicted"
    assert best_within(rows, full_ms=10.0) == 2  # no budget: the lowest loss
    (tmp_path / "front.json").write_text(json.dumps({"full_ms": 10.0, "members": rows}))
    assert pick_member(tmp_path, FrontPick(latency_ratio=0.7)).name == "member-0.json"
    assert pick_member(tmp_path, FrontPick(latency_ratio=0.9)).name == "member-2.json"
    with pytest.raises(PrunekitError, match="fastest: 0.62 of it"):
        pick_member(tmp_path, FrontPick(latency_ratio=0.5))


def test_the_front_is_timed_only_where_its_timing_measures_what_the_table_predicts():
    from types import SimpleNamespace

    from prunekit.methods import jcw

    def lm(runtime, threads, batch):
        return SimpleNamespace(
            table=SimpleNamespace(machine={"runtime": runtime, "threads": threads}), batch_size=batch
        )

    assert jcw._measurable(lm("ort", 1, 1))
    assert not jcw._measurable(lm("deepsparse", 1, 1))  # the front is timed in ONNX Runtime
    assert not jcw._measurable(lm("ort", 2, 1))
    assert not jcw._measurable(lm("ort", 1, 64))


def test_jcw_on_the_users_own_loaders_through_prunekit_prune(tmp_path, monkeypatch, r20_lut):
    """Loaders prunekit cannot re-split are their own proxy task: the search and the member run on them."""
    from torch.utils.data import DataLoader, TensorDataset

    import prunekit

    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(160, 1, 28, 28, generator=g), torch.randint(0, 10, (160,), generator=g)
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32)
    tiny = {"epochs": 0.5, "lr": 0.05}
    losses = []

    def loss_fn(
        model, batch
    ):  # the user's objective: the supernet trains on it, the candidates are scored by it
        losses.append(1)
        return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], label_smoothing=0.1)

    torch.manual_seed(0)
    pruned, plan = prunekit.prune(
        create_model("resnet20:in_chans=1").eval(),
        torch.randn(1, 1, 28, 28),
        "jcw",
        {"latency_ratio": 0.95},
        train_loader=train,
        val_loader=val,
        spec="resnet20:in_chans=1",
        latency_lut=str(r20_lut),
        supernet={"cns": tiny, "wp": tiny, "finetune_epochs": 0.2},
        bn_batches=2,
        search={"population": 4, "generations": 1},
        member={"regular": tiny, "admm": None, "ft": None},
        measure_front=False,
        out_dir=tmp_path,
        loss_fn=loss_fn,
    )
    # supernet steps (2 x 2 x 0.5 epochs of 4 batches) + 8 candidates x 1 val batch + the member's steps
    assert len(losses) >= 8 + 8
    assert (tmp_path / "front" / "front.json").is_file()
    assert plan.meta["method"] == "jcw" and plan.groups
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_macs_budget_caps_the_target_latencies_where_its_members_are():
    """JCW searches on latency; under a MACs budget the targets' high end is the predicted latency of the widest
    uniform width within it (else the front sits above the budget: the arena's ResNet-20 at 25% of the MACs got a
    front at 58-71% of the latency and no member within it)."""
    from types import SimpleNamespace

    from prunekit.cost.budget import Budget
    from prunekit.cost.macs import CostModel
    from prunekit.methods.jcw import target_span
    from prunekit.space import ChannelSpace

    model = create_model("resnet20:in_chans=1").eval()
    space = ChannelSpace.build(model, (1, 1, 28, 28), quiet=True)
    cost = CostModel(space)
    full = cost.cost().macs

    def lm(widths):  # a latency that grows with the MACs: ms = MACs / 1e7
        return cost.macs(np.asarray(widths)) / 1e7

    lo, hi = 0.1 * full / 1e7, full / 1e7
    ctx = SimpleNamespace(budget=Budget.of_macs(cost, 0.25 * full), cost=cost, space=space, target_macs=None)
    (a, b), capped = target_span(ctx, lm, hi, lo)  # either order
    assert capped and a == lo and b == pytest.approx(0.25 * full / 1e7, rel=0.05) and b <= 0.25 * full / 1e7
    ctx.budget = Budget.of_macs(cost, 2 * full)  # the whole range is within the budget: nothing to cap
    assert target_span(ctx, lm, lo, hi) == ((lo, hi), False)


def test_a_train_budget_no_front_member_meets_fails_right_after_the_search(
    tmp_path, capsys, monkeypatch, r20_lut
):
    """``method.train``'s budgets are checked against the front as soon as it is written, before the deployed member
    trains (it used to fail only after that member's REGULAR / ADMM / FT training)."""
    from prunekit.methods import jcw

    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")
    trained = []
    monkeypatch.setattr(jcw, "_train_member", lambda *a, **k: trained.append(k.get("tag")) or 1 / 0)
    tiny = {"epochs": 0.2, "lr": 0.05}
    cfg = {
        "model": "resnet20",
        "data": {"name": "fashion_mnist", "subset_train": 300, "subset_val": 60, "subset_test": 60},
        "baseline": {"train": {"epochs": 0.2, "lr": 0.1}},
        "target": {"latency_ratio": 0.95, "latency_lut": str(r20_lut)},
        "method": {
            "name": "jcw",
            "proxy": {"train_per_class": 10, "val_per_class": 3},
            "supernet": {"cns": tiny, "wp": tiny, "finetune_epochs": 0.1},
            "bn_batches": 1,
            "search": {"population": 4, "generations": 1},
            "train": {"latency_ratio": [0.95, 0.6]},  # 0.6 is above the space's floor, below this tiny front
        },
        "export": {"onnx": False, "latency": False},
    }
    path = tmp_path / "jcw.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    monkeypatch.setattr(
        jcw,
        "_budget_pick",
        lambda rows, b, ratio, full_ms: None if b * full_ms < 0.7 * rows[-1]["predicted_ms"] else 0,
    )
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no front member within 0.6x" in err[0], err
    assert (out / "front" / "front.json").is_file()  # the search's result is kept: raising the budget resumes
    assert trained == []  # and no member was trained first


def test_a_supernet_near_chance_is_warned_about_once(tmp_path, monkeypatch, caplog):
    """The MobileNetV2 preset's first supernet (3 + 5 proxy epochs) scored 2.15 against chance ln 10 = 2.30 and its
    front collapsed; a search on such a supernet says so after its first generation."""
    import logging

    proxy = jsearch.Proxy(None, None, [], classes=10)
    msg = jsearch.undertrained(2.15, proxy)
    assert msg and "barely learned" in msg and "2.30" in msg
    assert jsearch.undertrained(0.68, proxy) is None  # the 10 + 20 epoch supernet: fine
    assert jsearch.undertrained(2.15, jsearch.Proxy(None, None, [])) is None  # classes unknown
    assert jsearch.undertrained(2.15, jsearch.Proxy(None, None, [], loss_fn=len, classes=10)) is None

    kw = _phase(tmp_path, monkeypatch, tmp_path / "run")
    seen = []
    monkeypatch.setattr(jsearch, "undertrained", lambda loss, p: seen.append(loss) or "MSG near chance")
    with caplog.at_level(logging.WARNING, logger="prunekit.methods.jcw.search"):
        jsearch.run_search_phase(**kw)
    assert len(seen) == 1 and [r.getMessage() for r in caplog.records].count("MSG near chance") == 1


def test_a_macs_budget_screens_the_proposals_so_every_front_member_meets_it(tmp_path, monkeypatch):
    """Capped targets still left two of three arena seeds (ResNet-20, 25% of the MACs) without a front member
    within the budget; proposals over a MACs budget are now never evaluated."""
    from types import SimpleNamespace

    from prunekit.cost.budget import Budget
    from prunekit.cost.macs import CostModel
    from prunekit.methods.jcw import _bind_budget_screen

    kw = _phase(tmp_path, monkeypatch, tmp_path / "run")
    enc, space, searcher = kw["enc"], kw["space"], kw["searcher"]
    cost = CostModel(space)
    rand = enc.bounds.random(np.random.default_rng(0), 200)
    macs = np.array([cost.cost(enc.decode(g)).macs for g in rand])  # the plans' own count, as _pick checks
    limit = float(np.median(macs))
    ctx = SimpleNamespace(budget=Budget.of_macs(cost, limit), smoke=False, target_macs=None)
    assert _bind_budget_screen(searcher, ctx, enc) == ["macs"]
    assert (searcher.screen(rand) == (macs <= limit)).all()  # exact: the widths' count is the plans'
    outcome = jsearch.run_search_phase(**kw)
    pop_macs = [cost.cost(enc.decode(g)).macs for g in outcome.genes]
    assert len(pop_macs) == 4 and max(pop_macs) <= limit
    assert outcome.facts["screened_out"] > 0  # about half the random proposals were over it
    # a latency-only budget screens nothing (its targets cover it, and the front serves other budgets)
    lat = SimpleNamespace(budget=SimpleNamespace(metrics_constrained=["latency_ms"]), smoke=False)
    fresh = NSGA2(enc.bounds, NSGA2Config.jcw(population=4, generations=2), seed=0, target_range=(1.0, 2.0))
    assert _bind_budget_screen(fresh, lat, enc) == [] and fresh.feasible is None
