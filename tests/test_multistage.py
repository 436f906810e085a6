"""multistage: cubic AGP schedule, AGPCallback masks under momentum/weight decay, stage handover of the best
checkpoint, resume equivalence, and an end-to-end CLI run on a real Fashion-MNIST subset."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit import importance
from prunekit.cost.macs import CostModel, measure_macs
from prunekit.errors import PrunekitError
from prunekit.methods import METHODS, multistage, parse_method_config
from prunekit.methods.base import MethodContext
from prunekit.methods.multistage.agp import AGPCallback, alive_channels
from prunekit.methods.multistage.schedules import (
    agp_ratio,
    parse_schedule,
    prune_steps,
    stage_pairs,
    stage_ratios,
)
from prunekit.models import create_model
from prunekit.space import ChannelSpace, Plan, apply, rebuild
from prunekit.space.widths import legal_width
from prunekit.train import Callback, evaluate, fit

SHAPE = (1, 3, 32, 32)
MBV1 = "mobilenet_v1:width_mult=0.25,num_classes=10"
STAGE = {"epochs": 3, "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-2, "no_wd_bn_bias": False}


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("PRUNEKIT_NO_PROGRESS", "1")


def _loader(n=32, bs=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=bs)


class Perturb(Callback):
    """Adds ``eps * sum(all parameters)`` to the loss: every weight (BN gamma/beta included) gets a gradient, so a
    pruned weight that is not held at zero moves after one step."""

    def extra_loss(self, state, model):
        return 1e-3 * sum(p.sum() for p in model.parameters())


# ============================================================================== schedules
def test_cubic_schedule_values():
    # r = r_end + (r_begin - r_end) * (1 - p)^3
    assert agp_ratio(0, 0, 100, 0.25, 0.375) == 0.25
    assert agp_ratio(50, 0, 100, 0.25, 0.375) == pytest.approx(0.375 - 0.125 * 0.5**3)
    assert agp_ratio(25, 0, 100, 0.0, 0.5) == pytest.approx(0.5 - 0.5 * 0.75**3)
    assert agp_ratio(100, 0, 100, 0.25, 0.375) == 0.375
    assert agp_ratio(150, 0, 100, 0.25, 0.375) == 0.375  # clamped after the ramp
    assert agp_ratio(-5, 0, 100, 0.1, 0.5) == 0.1  # clamped before it
    assert agp_ratio(30, 10, 50, 0.0, 0.8) == pytest.approx(0.8 - 0.8 * 0.5**3)  # offset window
    assert agp_ratio(50, 0, 100, 0.0, 0.5, exponent=1.0) == pytest.approx(0.25)  # linear
    assert agp_ratio(0, 0, 0, 0.2, 0.4) == 0.4  # zero-length ramp: one-shot
    vals = [agp_ratio(t, 0, 40, 0.0, 0.5) for t in range(41)]
    steps = [b - a for a, b in zip(vals, vals[1:], strict=False)]
    assert all(s > 0 for s in steps) and all(b < a for a, b in zip(steps, steps[1:], strict=False))  # concave
    with pytest.raises(ValueError):
        agp_ratio(1, 0, 10, 0.0, 0.5, exponent=0)


def test_stage_lists_and_prune_steps():
    eight = parse_schedule("8stage")
    assert eight == pytest.approx([k / 8 for k in range(1, 8)]) and len(eight) == 7  # the name counts r=0
    sixteen = parse_schedule("16stage")
    assert len(sixteen) == 15 and sixteen[0] == 1 / 16 and sixteen[-1] == 15 / 16
    assert parse_schedule("4stage") == [0.25, 0.5, 0.75]
    assert parse_schedule([0.3, 0.6]) == [0.3, 0.6]
    assert stage_ratios("8stage", 0.5) == [0.125, 0.25, 0.375, 0.5]
    assert stage_ratios("8stage", 0.6) == [0.125, 0.25, 0.375, 0.5, 0.6]
    assert stage_ratios([0.25, 0.5, 0.75], 0.75) == [0.25, 0.5, 0.75]
    assert stage_pairs([0.25, 0.5]) == [(0.0, 0.25), (0.25, 0.5)]
    for bad, msg in (
        ("7stages", "unknown schedule"),
        ("1stage", "N >= 2"),
        ([], "empty"),
        ([0.5, 0.25], "increasing"),
        ([0.5, 1.0], r"\(0, 1\)"),
    ):
        with pytest.raises(PrunekitError, match=msg):
            parse_schedule(bad)
    assert prune_steps(10, 3) == [3, 6, 9, 10]
    assert prune_steps(9, 3) == [3, 6, 9]
    assert prune_steps(0, 5) == [0]
    assert prune_steps(2, 5) == [2]


def test_config_validation():
    cfg = parse_method_config({"name": "multistage"})
    assert isinstance(cfg, multistage.Config) and "multistage" in METHODS
    assert cfg.ratios() == pytest.approx([k / 8 for k in range(1, 8)])
    assert cfg.stage.lr == 0.01 and cfg.stage.exp_decay == 0.96 and cfg.stage.schedule == "exponential"
    assert parse_method_config({"name": "multistage", "schedule": [0.2, 0.4]}).ratios() == [0.2, 0.4]
    for bad, msg in (
        ({"schedule": "3stages"}, "unknown schedule"),
        ({"schedule": [0.4, 0.2]}, "increasing"),
        ({"ramp_epochs": 5, "stage": {"epochs": 2}}, "ramp_epochs"),
        ({"importance": "l3"}, "unknown importance"),
        ({"protect": ["stem"]}, "unknown group tag"),
        ({"ranking": "uniform"}, "ranking"),
    ):
        with pytest.raises(PrunekitError, match=msg):
            parse_method_config({"name": "multistage", **bad})


# ============================================================================== plans at a ratio
@pytest.mark.parametrize("ranking", ["per_layer", "global"])
def test_plan_at_ratio_keeps_top_l1_and_never_revives(ranking):
    torch.manual_seed(0)
    model = create_model(MBV1).eval()
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    cm = CostModel(space)
    scores = {g.name: importance.l1(model, space, g) for g in space.groups}
    p1 = multistage.plan_at_ratio(space, cm, scores, 0.25, ranking=ranking)
    alive = alive_channels(space, p1)
    fresh = {n: torch.rand(s.numel(), dtype=torch.float64) for n, s in scores.items()}  # reshuffled scores
    p2 = multistage.plan_at_ratio(space, cm, fresh, 0.5, ranking=ranking, alive=alive)
    alive2 = alive_channels(space, p2)
    assert all(not bool((alive2[n] & ~alive[n]).any()) for n in alive)  # nested: nothing revived
    uniform = multistage.uniform_ratio_widths(space, 0.5)
    if ranking == "per_layer":
        assert list(p2.widths(space)) == list(uniform)
        assert list(uniform) == [legal_width(g, g.channels * 0.5) for g in space.groups]
        for g in space.groups:  # stage 1 kept the top-k by summed filter L1
            k = len(p1.groups[g.name].keep)
            assert set(p1.groups[g.name].keep) == set(torch.topk(scores[g.name], k).indices.tolist())
    else:
        assert cm.cost(p2).macs <= cm.macs(uniform)
        assert cm.cost(p2).macs >= 0.9 * cm.macs(uniform)
    assert measure_macs(apply(model, p2, space), SHAPE) == cm.cost(p2).macs


# ============================================================================== AGP callback
class Watch(Callback):
    """Runs after the AGP callback: after every step checks pruned weights, BN statistics and momentum buffers."""

    def __init__(self, agp):
        self.agp, self.widths, self.bad, self.momentum_checked = agp, [], [], 0

    def on_step_end(self, state):
        masks = self.agp.masks
        by_id = {id(p): n for n, p in state.model.named_parameters()}
        for name, m in masks.params.items():
            p = state.model.get_parameter(name)
            if torch.count_nonzero(p.detach()[~m]):
                self.bad.append((state.step, name))
        for pg in state.optimizer.param_groups:
            for p in pg["params"]:
                buf = state.optimizer.state.get(p, {}).get("momentum_buffer")
                m = masks.params.get(by_id[id(p)])
                if buf is not None and m is not None:
                    self.momentum_checked += 1
                    if torch.count_nonzero(buf[~m]):
                        self.bad.append((state.step, "momentum " + by_id[id(p)]))
        for bname, dead in masks.bn_channels.items():
            bn = state.model.get_submodule(bname)
            if torch.count_nonzero(bn.running_mean[dead]) or torch.count_nonzero(bn.running_var[dead] - 1):
                self.bad.append((state.step, "stats " + bname))
        self.widths.append((state.step, self.agp.ratio, self.agp.plan.widths(self.agp.space).tolist()))


def _agp_setup(r_begin=0.0, r_end=0.5, ramp_epochs=1.5, prune_every=2):
    torch.manual_seed(0)
    model = create_model(MBV1)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    cm = CostModel(space)

    def prune_fn(m, ratio, alive):
        scores = {g.name: importance.l1(m, space, g) for g in space.groups}
        return multistage.plan_at_ratio(space, cm, scores, ratio, alive=alive)

    agp = AGPCallback(
        space, prune_fn, r_begin=r_begin, r_end=r_end, ramp_epochs=ramp_epochs, prune_every=prune_every
    )
    return model, space, agp


def test_agp_ramp_masks_survive_momentum_and_weight_decay():
    model, space, agp = _agp_setup()
    watch = Watch(agp)
    res = fit(model, _loader(), STAGE, val_loader=_loader(16, seed=1), callbacks=[Perturb(), agp, watch])
    # 4 steps/epoch, ramp 1.5 epochs = 6 steps, events at steps 2, 4, 6
    assert agp.end_step == 6 and agp.events == 3 and agp.done and agp.ratio == 0.5
    ratios = [r for _, r, _ in watch.widths]
    r2, r4 = agp_ratio(2, 0, 6, 0.0, 0.5), agp_ratio(4, 0, 6, 0.0, 0.5)
    assert ratios == pytest.approx([0.0, r2, r2, r4, r4] + [0.5] * 7)  # after steps 1..12
    for step, ratio, widths in watch.widths:
        assert widths == multistage.uniform_ratio_widths(space, ratio).tolist(), step
    assert watch.bad == [] and watch.momentum_checked > 0
    # the epochs of the ramp are not eligible for the best checkpoint
    h = res.history
    assert h[0]["val_top1"] is None and h[0]["ramp_val_top1"] is not None and h[0]["prune_ratio"] < 0.5
    assert h[1]["val_top1"] is not None and h[2]["prune_ratio"] == 0.5 and res.best_epoch in (2, 3)
    # the trained masked model equals its physically pruned export
    final = apply(model, agp.plan, space)
    multistage.check_equivalent(model, final, SHAPE)


def test_agp_zero_length_ramp_prunes_once_before_training():
    model, space, agp = _agp_setup(ramp_epochs=0)
    watch = Watch(agp)
    fit(model, _loader(), {**STAGE, "epochs": 1}, callbacks=[Perturb(), agp, watch])
    assert agp.events == 1 and agp.done
    assert all(r == 0.5 for _, r, _ in watch.widths) and watch.bad == []


def test_equivalence_check_detects_unmasked_weights():
    model, space, agp = _agp_setup(ramp_epochs=0)
    fit(model, _loader(), {**STAGE, "epochs": 1}, callbacks=[agp])
    final = apply(model, agp.plan, space)
    multistage.check_equivalent(model, final, SHAPE)
    with torch.no_grad():  # revive the pruned weights in the masked model only
        for name, m in agp.masks.params.items():
            model.get_parameter(name)[~m] = 0.1
    with pytest.raises(RuntimeError, match="disagree"):
        multistage.check_equivalent(model, final, SHAPE)


# ============================================================================== the method, with a fake run context
class Scripted(Callback):
    """Replaces the validation top-1 of epoch ``e`` by ``values[e]`` (before the AGP callback hides ramp epochs)."""

    def __init__(self, values):
        self.values = values

    def on_epoch_end(self, state, metrics):
        metrics["val_top1"] = self.values[state.epoch]


class Killed(Exception):
    pass


class Killer(Callback):
    """Raises at the start of epoch ``epoch`` (0-based) when armed: the previous epoch's checkpoint exists."""

    def __init__(self, armed, epoch=1):
        self.armed, self.epoch = armed, epoch

    def on_epoch_begin(self, state):
        if self.armed and state.epoch == self.epoch:
            raise Killed


class Last(Callback):
    """Records the weights of the last epoch (``on_train_end`` runs before fit loads the best ones)."""

    def __init__(self, store, tag):
        self.store, self.tag = store, tag

    def on_train_end(self, state):
        self.store[self.tag] = {k: v.detach().clone() for k, v in state.model.state_dict().items()}


class FakeRun:
    """ctx.train / ctx.evaluate like pipeline._Run: fit with checkpoint/resume under out/ckpt/<tag>.ckpt."""

    def __init__(self, out: Path, script=None, kill_tag=None):
        self.out, self.script, self.kill_tag = out, script, kill_tag
        self.starts, self.best, self.last, self.tags = {}, {}, {}, []
        self.train_loader, self.val_loader = _loader(32), _loader(16, seed=1)

    def train(self, model, tc, *, tag, callbacks=(), select="best", loss_fn=None):
        self.tags.append(tag)
        self.starts[tag] = {k: v.clone() for k, v in model.state_dict().items()}
        extra = [Scripted(self.script)] if self.script else []
        cbs = [*extra, Killer(armed=tag == self.kill_tag), Last(self.last, tag), *callbacks]
        ckpt = self.out / "ckpt" / f"{tag}.ckpt"
        res = fit(
            model,
            self.train_loader,
            tc,
            val_loader=self.val_loader,
            callbacks=cbs,
            ckpt_path=ckpt,
            resume=ckpt.is_file(),
            select=select,
        )
        if select == "best" and res.best_state is not None:
            model.load_state_dict(res.best_state)
            self.best[tag] = res.best_state
        return res

    def evaluate(self, model, split):
        return evaluate(model, self.val_loader if split == "val" else _loader(16, seed=2))

    def finetune(self, *a, **k):
        raise AssertionError("multistage must not call finetune")

    def ctx(self, smoke=False):
        torch.manual_seed(0)
        model = create_model(MBV1)
        space = ChannelSpace.build(model, SHAPE, quiet=True)
        data = SimpleNamespace(train=self.train_loader, val=self.val_loader, test=None)
        return MethodContext(
            model=model,
            spec=MBV1,
            space=space,
            cost=CostModel(space),
            target_macs=None,
            data=data,
            device="cpu",
            out_dir=self.out,
            finetune=self.finetune,
            evaluate=self.evaluate,
            train=self.train,
            smoke=smoke,
        )


def _cfg(**kw):
    base = {
        "name": "multistage",
        "schedule": [0.25, 0.5],
        "ramp_epochs": 1.5,
        "prune_every": 2,
        "stage": {**STAGE, "epochs": 4},
        "latency": False,
    }
    return parse_method_config({**base, **kw})


def test_stage_handover_starts_from_the_best_checkpoint(tmp_path):
    # epoch 1 has the highest score but ends inside the ramp (not eligible); epoch 3 is the best, not the last
    run = FakeRun(tmp_path, script=[0.99, 0.5, 0.9, 0.7])
    ctx = run.ctx()
    snap = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    res = multistage.run(ctx, _cfg())
    assert run.tags == ["stage1", "stage2"]
    assert res.extra["best_epochs"] == [3, 3] and res.trained
    best1 = run.best["stage1"]
    assert all(
        torch.equal(run.starts["stage2"][k], best1[k]) for k in best1
    )  # stage 2 starts from stage 1's best
    assert any(
        not torch.equal(run.last["stage1"][k], best1[k]) for k in best1
    )  # ... which is not its last epoch
    assert all(torch.equal(v, snap[k]) for k, v in ctx.model.state_dict().items())  # ctx.model untouched

    # per-stage rows, plans and weights on disk, trade-off points
    assert [h["stage"] for h in res.history] == [0, 1, 2]
    assert [h["ratio"] for h in res.history] == [0.0, 0.25, 0.5]
    assert set(res.history[1]) == {"stage", "ratio", "val_top1", "test_top1", "macs", "params", "latency_ms"}
    macs = [h["macs"] for h in res.history]
    assert macs[0] > macs[1] > macs[2] == ctx.cost.cost(res.plan).macs
    assert [p["macs"] for p in res.extra["points"]] == macs and len(res.extra["points"]) == 3
    assert res.plan.widths(ctx.space).tolist() == multistage.uniform_ratio_widths(ctx.space, 0.5).tolist()
    for k in (1, 2):
        plan = Plan.load(tmp_path / "stages" / f"stage{k}.plan.json")
        assert plan.meta["ratio"] == [0.25, 0.5][k - 1] and plan.model == MBV1
        assert (tmp_path / "stages" / f"stage{k}.safetensors").is_file()
    # the returned model is the exported best checkpoint of the last stage
    from safetensors.torch import load_file

    rebuilt = rebuild(
        Plan.load(tmp_path / "stages" / "stage2.plan.json"), load_file(tmp_path / "stages/stage2.safetensors")
    )
    x = torch.randn(2, *SHAPE[1:])
    res.model.eval()
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), res.model(x), atol=1e-5)
    assert res.history[2]["val_top1"] == pytest.approx(run.evaluate(res.model, "val")["top1"])


def test_resume_mid_stage_matches_uninterrupted_run(tmp_path):
    ref_run = FakeRun(tmp_path / "ref")
    ref = multistage.run(ref_run.ctx(), _cfg())

    killed = FakeRun(tmp_path / "killed", kill_tag="stage2")
    with pytest.raises(Killed):
        multistage.run(killed.ctx(), _cfg())
    assert (tmp_path / "killed" / "ckpt" / "stage2.ckpt").is_file()  # stage 2 died after its first epoch
    assert not (tmp_path / "killed" / "stages" / "stage2.plan.json").exists()
    again = FakeRun(tmp_path / "killed")  # same command again: stage 1 replays, stage 2 resumes at epoch 2
    res = multistage.run(again.ctx(), _cfg())

    assert res.history == ref.history
    assert res.plan.groups == ref.plan.groups
    ref_sd, sd = ref.model.state_dict(), res.model.state_dict()
    assert ref_sd.keys() == sd.keys() and all(torch.equal(ref_sd[k], sd[k]) for k in ref_sd)
    ckpt = torch.load(tmp_path / "killed" / "ckpt" / "stage2.ckpt", weights_only=True)
    ref_ckpt = torch.load(tmp_path / "ref" / "ckpt" / "stage2.ckpt", weights_only=True)
    timing = {"img_s", "train_s", "wall_s"}

    def no_timing(h):
        return [{k: v for k, v in row.items() if k not in timing} for row in h]

    assert len(ckpt["history"]) == 4 and no_timing(ckpt["history"]) == no_timing(ref_ckpt["history"])


def test_method_errors_and_global_ranking(tmp_path):
    run = FakeRun(tmp_path)
    ctx = run.ctx()
    ctx.data = SimpleNamespace(train=run.train_loader, val=None, test=None)
    with pytest.raises(PrunekitError, match="val_fraction"):
        multistage.run(ctx, _cfg())
    ctx = run.ctx()
    ctx.train = None
    with pytest.raises(PrunekitError, match="prunekit run"):
        multistage.run(ctx, _cfg())
    ctx = run.ctx()
    with pytest.raises(PrunekitError, match="protected"):
        multistage.run(ctx, _cfg(protect=["first", "depthwise", "last"]))

    ctx = run.ctx()
    with torch.no_grad():
        ctx.model.get_parameter("features.1.conv_pw.weight")[0, 0] = float("nan")
    with pytest.raises(PrunekitError, match="diverged"):
        multistage.run(ctx, _cfg())

    # global ranking, one stage, ramp of zero length, smoke shrinking: the stage ends at the per-layer MACs or below
    run = FakeRun(tmp_path / "global")
    ctx = run.ctx(smoke=True)
    res = multistage.run(
        ctx, _cfg(schedule="2stage", ranking="global", ramp_epochs=0, stage={**STAGE, "epochs": 2})
    )
    assert run.tags == ["stage1"] and res.extra["stage_epochs"] == 0.5  # --smoke: half an epoch per stage
    per_layer = ctx.cost.macs(multistage.uniform_ratio_widths(ctx.space, 0.5))
    assert res.history[-1]["macs"] <= per_layer
    assert res.plan.widths(ctx.space).tolist() != multistage.uniform_ratio_widths(ctx.space, 0.5).tolist()


def test_round_to_auto_is_resolved_once_at_the_start_of_run(tmp_path, monkeypatch):
    # the config may keep round_to: "auto"; run resolves it (resolve_round_to) before any stage and prunes with the int
    from prunekit.cost import latency

    calls = []

    def fake_resolve(v):
        calls.append(v)
        return 16 if v == "auto" else int(v)

    monkeypatch.setattr(multistage, "resolve_round_to", fake_resolve)
    cfg = _cfg(schedule=[0.5], ramp_epochs=0, stage={**STAGE, "epochs": 1})
    cfg.round_to = "auto"  # as the config will hold it once validation stops resolving it
    run = FakeRun(tmp_path)
    ctx = run.ctx()
    res = multistage.run(ctx, cfg)
    assert calls == ["auto"]
    assert (
        res.plan.widths(ctx.space).tolist()
        == multistage.uniform_ratio_widths(ctx.space, 0.5, round_to=16).tolist()
    )
    assert latency.resolve_round_to(8) == 8 and latency.resolve_round_to("auto") in (8, 16)


# ============================================================================== end to end through the CLI
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FMNIST.is_file(), reason="apt-get install dataset-fashion-mnist")
def test_cli_multistage_end_to_end(tmp_path, capsys):
    import yaml

    from prunekit.cli import main

    tree = {
        "model": "mobilenet_v1:width_mult=0.25",
        "data": {
            "name": "fashion_mnist",
            "subset_train": 2000,
            "subset_val": 200,
            "subset_test": 200,
            "batch_size": 64,
        },
        "baseline": {"train": {"epochs": 2, "lr": 0.1, "weight_decay": 4.0e-5, "warmup_epochs": 0.5}},
        "method": {
            "name": "multistage",
            "schedule": [0.25, 0.5],
            "ramp_epochs": 0.5,
            "prune_every": 4,
            "stage": {"epochs": 1, "lr": 0.01, "schedule": "exponential", "exp_decay": 0.96},
        },
        "finetune": None,
        "export": {"latency_batch": 8},
    }
    cfg = tmp_path / "ms.yaml"
    cfg.write_text(yaml.safe_dump(tree))
    out = tmp_path / "run"
    code = main(["run", str(cfg), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    rows = report["history"]["method"]
    assert [r["ratio"] for r in rows] == [0.0, 0.25, 0.5]
    assert all(r["latency_ms"] > 0 and 0 < r["test_top1"] <= 1 for r in rows)
    assert report["baseline"]["top1"] > 0.3 and rows[0]["test_top1"] == pytest.approx(
        report["baseline"]["top1"]
    )
    assert rows[0]["macs"] == report["baseline"]["macs"] and rows[-1]["macs"] == report["pruned"]["macs"]
    assert rows[-1]["test_top1"] == pytest.approx(
        report["pruned"]["top1"]
    )  # the returned model is the last stage
    assert {"stage1", "stage2"} <= set(report["history"])  # per-epoch stage training in the report
    assert "finetune" not in report["history"]  # trained=True: no extra finetune phase
    assert len(report["extra"]["points"]) == 3
    md = (out / "report.md").read_text()
    assert "## Method history" in md and "test_top1" in md and "## Trade-off points" in md and "r=0.5" in md
    for k in (1, 2):
        assert (out / "stages" / f"stage{k}.plan.json").is_file()
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
