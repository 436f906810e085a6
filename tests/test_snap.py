"""``round_to: lut`` (issue #16): the latency table decides, per group, whether rounding a kept count up to the channel
block is free. Synthetic timings (tests/test_lut.py's fake runtime), so the outcome is known: where unaligned inputs
cost double, counts are raised to the block; where they cost what their MACs say, nothing changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.test_lut import fake_avx2, fake_overhead, fake_time

from prunekit.cost import lut as lut_mod
from prunekit.cost.budget import Budget, TargetConfig
from prunekit.cost.lut import build_table
from prunekit.cost.macs import CostModel
from prunekit.cost.predict import LatencyModel
from prunekit.errors import PrunekitError
from prunekit.methods import magnitude, uniform
from prunekit.methods.base import MethodContext
from prunekit.models import create_model
from prunekit.search.fit import fit_uniform, prune_to_target
from prunekit.search.snap import TIE, snap_to_table
from prunekit.space import ChannelSpace

SHAPE = (1, 3, 32, 32)


def _setup(monkeypatch, tmp_path, *, penalty: bool):
    if penalty:
        fake_time(monkeypatch)  # unaligned input channels cost double
    else:
        fake_avx2(monkeypatch)

        def flat_runnable(cfg, batch, runtime, threads):
            k = int(np.prod(cfg.kernel)) if cfg.kind != "linear" else 1
            pos = int(np.prod(cfg.in_spatial)) if cfg.in_spatial else 1
            ms = 1e-6 * batch * pos * k * cfg.c_in * cfg.c_out / cfg.groups
            return lambda ms=ms: ms

        monkeypatch.setattr(lut_mod, "runnable", flat_runnable)
        monkeypatch.setattr(lut_mod, "time_interleaved", lambda fns, runtime, **kw: [fn() for fn in fns])
    model = create_model("resnet20").eval()
    table = build_table(model, SHAPE, tmp_path / "t.json", points=5, groups=(1,), overhead=fake_overhead)
    space = ChannelSpace.build(model, SHAPE, quiet=True)
    cost = CostModel(space)
    lm = LatencyModel(table, space)
    return model, space, cost, lm


def _budget(cost, lm, ratio=0.5, **extra):
    return Budget.from_target(
        TargetConfig(latency_ratio=ratio, latency_lut="t.json", **extra), cost, latency=lm
    )


def test_snapping_raises_unaligned_counts_where_the_table_says_the_block_is_free(monkeypatch, tmp_path):
    _, space, cost, lm = _setup(monkeypatch, tmp_path, penalty=True)
    budget = _budget(cost, lm)
    _, widths = fit_uniform(space, cost, budget, round_to=1)
    assert (widths % 8 != 0).any()  # the unrounded fit leaves counts off the block: something to snap
    snapped, changed = snap_to_table(space, widths, budget)
    assert changed, "nothing snapped although unaligned inputs cost double"
    assert (snapped >= widths).all() and (snapped <= space.channels).all()
    for name, (before, after) in changed.items():
        assert after > before
        i = [g.name for g in space.groups].index(name)
        # to where the table (ONNX Runtime's layout rule: inputs a multiple of 4 run blocked) stops charging double
        assert after % 4 == 0 or after == space.channels[i]
        assert after <= -(-before // 8) * 8
    assert lm(snapped) <= lm(widths) * (1 + TIE)
    assert budget.satisfied(snapped)
    assert cost.macs(snapped[None])[0] > cost.macs(widths[None])[0]  # more channels kept for the same latency


def test_where_unaligned_counts_cost_no_more_nothing_is_rounded(monkeypatch, tmp_path):
    _, space, cost, lm = _setup(monkeypatch, tmp_path, penalty=False)
    budget = _budget(cost, lm)
    _, widths = fit_uniform(space, cost, budget, round_to=1)
    assert (widths % 8 != 0).any()
    snapped, changed = snap_to_table(space, widths, budget)
    assert changed == {} and (snapped == widths).all()


def test_snapping_keeps_an_analytic_constraint_and_the_cap(monkeypatch, tmp_path):
    _, space, cost, lm = _setup(monkeypatch, tmp_path, penalty=True)
    _, widths = fit_uniform(space, cost, _budget(cost, lm), round_to=1)
    # a MACs limit at the unsnapped model's MACs: no group may grow
    tight = _budget(cost, lm, macs=int(cost.macs(widths[None])[0]))
    snapped, changed = snap_to_table(space, widths, tight)
    assert changed == {} and tight.satisfied(snapped)
    cap = widths.copy()  # no channel alive beyond the widths: nothing to grow into
    assert snap_to_table(space, widths, _budget(cost, lm), cap=cap)[1] == {}
    frozen = range(len(widths))
    assert snap_to_table(space, widths, _budget(cost, lm), frozen=frozen)[1] == {}


def test_magnitude_ranking_snaps_and_keeps_the_next_best_channels(monkeypatch, tmp_path):
    model, space, cost, lm = _setup(monkeypatch, tmp_path, penalty=True)
    budget = _budget(cost, lm)
    gen = torch.Generator().manual_seed(0)
    scores = {g.name: torch.rand(g.channels, generator=gen) for g in space.groups}
    plain = prune_to_target(space, cost, scores, budget)
    snapped = prune_to_target(space, cost, scores, budget, snap=True)
    assert snapped.meta["snapped"], "nothing snapped"
    assert budget.satisfied(snapped)
    names = [g.name for g in space.groups]

    def keep(plan, name):  # a group kept whole is absent from the plan
        gc = plan.groups.get(name)
        return set(gc.keep) if gc else set(range(space.channels[names.index(name)]))

    for name, (before, after) in snapped.meta["snapped"].items():
        assert len(keep(snapped, name)) == after and len(keep(plain, name)) == before
        assert keep(plain, name) <= keep(snapped, name)  # the channels the fit chose stay; the next best join


def _ctx(model, space, cost, budget):
    return MethodContext(
        model=model,
        spec="resnet20",
        space=space,
        cost=cost,
        target_macs=budget.limit("macs"),
        data=None,
        device="cpu",
        out_dir=Path("."),
        finetune=None,
        evaluate=None,
        budget=budget,
    )


def test_uniform_with_round_to_lut_returns_the_snapped_plan(monkeypatch, tmp_path):
    model, space, cost, lm = _setup(monkeypatch, tmp_path, penalty=True)
    budget = _budget(cost, lm)
    res = uniform.run(_ctx(model, space, cost, budget), uniform.Config(round_to="lut"))
    assert res.plan.meta["snapped"] and res.extra["snapped_groups"] == len(res.plan.meta["snapped"])
    assert budget.satisfied(res.plan)
    plain = uniform.run(_ctx(model, space, cost, budget), uniform.Config(round_to=1))
    assert cost.cost(res.plan).macs > cost.cost(plain.plan).macs


def test_round_to_lut_without_a_table_is_one_clear_error(monkeypatch, tmp_path):
    model, space, cost, _ = _setup(monkeypatch, tmp_path, penalty=True)
    ctx = _ctx(model, space, cost, Budget.of_macs(cost, cost.cost().macs / 2))
    for mod in (uniform, magnitude):
        cfg = mod.Config(round_to="lut")
        with pytest.raises(PrunekitError, match="round_to: lut .* set target.latency_lut"):
            mod.run(ctx, cfg)


def test_round_to_lut_is_refused_by_methods_that_do_not_fit_widths_to_a_budget():
    from pydantic import ValidationError

    from prunekit.methods import scratch

    with pytest.raises(ValidationError):
        scratch.Config(round_to="lut")
    assert uniform.Config(round_to="lut").round_to == "lut"
